"""The typed ``stpm_edge`` metadata of an exported model (ONNX ``metadata_props``, the JSON
sidecar beside it, and the body of an engine's sidecar): one definition, one validation, one
reader. Every consumer (runtime backends, eval, calibration, TensorRT, bench, C ABI) reads it
through :class:`ModelMetadata`, so a hostile or stale file fails here, in one line.

Schema version 2 (this release) moved the method-specific description (backbone, levels,
fusion, ...) under ``"method"`` and added ``"lowp"``, the low-precision regions of the
graph. Version-1 files (no ``lowp``) still open: their regions are the fused trunks of the
only method version 1 knew (STPM).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from stpm_edge.artifact.contract import METADATA_KEY, InputSpec
from stpm_edge.errors import StpmError

ONNX_FORMAT = "stpm-edge/onnx"
SCHEMA_VERSION = 2
PRECISIONS = ("fp32", "fp16", "int8")
V1_REGIONS = ("/trunks/",)  # what schema 1 exports lowered: the fused teacher+student trunks
MAX_DEPTH = 32  # nesting bound for anything read from a file


def _depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of JSON-like data, iteratively (a hostile file cannot exhaust the stack)."""
    stack, deepest = [(value, 1)], 0
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, d + 1) for x in v)
    return deepest


def in_scopes(name: str, scopes: tuple[str, ...] | list[str]) -> bool:
    """Whether an ONNX node name lies in one of the scopes."""
    return any(name.startswith(s) for s in scopes)


@dataclass(frozen=True)
class LowPrecision:
    """Which parts of the graph a precision pass may lower: ONNX node-name scopes (prefixes).

    Everything outside them (preprocessing, the method's head: norms, distances, memory-bank
    search, products, blur, max) stays FP32. ``fp16`` and ``int8`` are the scopes for each.
    """

    fp16: tuple[str, ...]
    int8: tuple[str, ...]

    def scopes(self, precision: str) -> tuple[str, ...]:
        return self.fp16 if precision == "fp16" else self.int8

    def to_dict(self) -> dict[str, Any]:
        return {"fp16": list(self.fp16), "int8": list(self.int8)}

    @classmethod
    def from_dict(cls, d: Any) -> LowPrecision:
        if not isinstance(d, dict):
            raise StpmError("lowp: expected a JSON object")
        out = []
        for key in ("fp16", "int8"):
            v = d.get(key, [])
            if not isinstance(v, list) or not all(isinstance(s, str) and s.startswith("/") for s in v):
                raise StpmError(f"lowp.{key}: expected a list of node-name scopes starting with '/'")
            out.append(tuple(v))
        return cls(*out)


@dataclass(frozen=True)
class Int8Info:
    """How an INT8 variant was made."""

    form: str  # "tensorrt" | "cpu"
    method: str
    images: int
    seed: int
    calib_folder: str
    keep_float: tuple[str, ...] = ()
    quantized_nodes: int = 0
    target: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["keep_float"] = list(self.keep_float)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Int8Info:
        if not isinstance(d, dict):
            raise StpmError("int8: expected a JSON object")
        try:
            return cls(str(d["form"]), str(d["method"]), int(d["images"]), int(d.get("seed", 0)),
                       str(d.get("calib_folder", "")), tuple(str(k) for k in d.get("keep_float") or ()),
                       int(d.get("quantized_nodes", 0)), str(d.get("target", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise StpmError(f"int8: bad or missing field ({type(e).__name__}: {e})") from None


def _finite(d: dict, key: str, where: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise StpmError(f"{where}: metadata {key!r} must be a finite number, got {v!r}")
    return float(v)


@dataclass
class ModelMetadata:
    """What an exported file says about itself. ``to_dict``/``from_dict`` round-trip;
    keys this version does not know are kept in ``extra`` and written back unchanged."""

    arch: str
    input: InputSpec
    model_size: tuple[int, int]
    preprocess: dict[str, Any]
    outputs: dict[str, Any]
    normalization: dict[str, Any]
    lowp: LowPrecision
    method: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    threshold: float = 0.5
    opset: int = 17
    checkpoint: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    fp16: dict[str, Any] | None = None
    int8: Int8Info | None = None
    engine: dict[str, Any] | None = None
    format: str = ONNX_FORMAT
    format_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("arch", "input", "model_size", "preprocess", "outputs", "normalization", "lowp", "method",
              "precision", "threshold", "opset", "checkpoint", "versions", "fp16", "int8", "engine", "format",
              "format_version")

    @property
    def batch(self) -> int | None:
        return self.input.batch

    @property
    def map_shape(self) -> tuple[int, int]:
        """(h, w) of the ``anomaly_map`` output."""
        shape = self.outputs.get("anomaly_map", {}).get("shape") or [0, 1, *self.model_size]
        return int(shape[-2]), int(shape[-1])

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": self.format, "format_version": self.format_version, "arch": self.arch,
                             "precision": self.precision, "input": self.input.to_dict(),
                             "model_size": list(self.model_size), "preprocess": self.preprocess,
                             "outputs": self.outputs, "threshold": self.threshold,
                             "normalization": self.normalization, "method": self.method,
                             "lowp": self.lowp.to_dict(), "opset": self.opset, "checkpoint": self.checkpoint,
                             "versions": self.versions}
        if self.fp16 is not None:
            d["fp16"] = self.fp16
        if self.int8 is not None:
            d["int8"] = self.int8.to_dict()
        if self.engine is not None:
            d["engine"] = self.engine
        return {**self.extra, **d}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any, where: Any = "model") -> ModelMetadata:
        """Validate a metadata dict (one-line StpmError naming ``where`` on any problem)."""
        if not isinstance(d, dict):
            raise StpmError(f"{where}: not an stpm-edge model ({METADATA_KEY!r} metadata is not a JSON object)")
        if _depth(d) > MAX_DEPTH:
            raise StpmError(f"{where}: {METADATA_KEY!r} metadata is nested deeper than {MAX_DEPTH} levels")
        if "input" not in d:
            raise StpmError(f"{where}: not an stpm-edge model ({METADATA_KEY!r} metadata has no 'input')")
        try:
            spec = InputSpec.from_dict(d["input"])
        except StpmError as e:
            raise StpmError(f"{where}: bad {METADATA_KEY!r} metadata: {e}") from None
        version = d.get("format_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise StpmError(f"{where}: metadata format_version {version!r} is not a positive integer")
        if version > SCHEMA_VERSION:
            raise StpmError(f"{where}: metadata format version {version} is newer than this stpm-edge supports "
                            f"({SCHEMA_VERSION}); upgrade stpm-edge")
        precision = d.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise StpmError(f"{where}: metadata precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        threshold = _finite(d, "threshold", str(where)) if "threshold" in d else 0.5
        size = d.get("model_size") or [spec.height, spec.width]
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise StpmError(f"{where}: metadata model_size {size!r}: expected [height, width]")
        for key in ("preprocess", "outputs", "normalization", "method", "checkpoint", "versions"):
            if key in d and not isinstance(d[key], dict):
                raise StpmError(f"{where}: metadata {key!r} must be a JSON object")
        if version == 1:  # v1: method fields at the top level, no lowp
            method = {k: d[k] for k in ("backbone", "layers", "blur_sigma", "fusion") if k in d}
            lowp = LowPrecision(V1_REGIONS, V1_REGIONS)
            extra = {k: v for k, v in d.items() if k not in cls._KNOWN and k not in method}
        else:
            method = dict(d.get("method") or {})
            try:
                lowp = LowPrecision.from_dict(d.get("lowp"))
            except StpmError as e:
                raise StpmError(f"{where}: {e}") from None
            extra = {k: v for k, v in d.items() if k not in cls._KNOWN}
        try:
            int8 = Int8Info.from_dict(d["int8"]) if d.get("int8") is not None else None
        except StpmError as e:
            raise StpmError(f"{where}: {e}") from None
        engine = d.get("engine")
        if engine is not None and not isinstance(engine, dict):
            raise StpmError(f"{where}: metadata 'engine' must be a JSON object")
        opset = d.get("opset", 17)
        return cls(arch=str(d.get("arch", "stpm")), input=spec, model_size=(int(size[0]), int(size[1])),
                   preprocess=dict(d.get("preprocess") or {}), outputs=dict(d.get("outputs") or {}),
                   normalization=dict(d.get("normalization") or {}), lowp=lowp, method=method, precision=precision,
                   threshold=threshold, opset=int(opset) if isinstance(opset, int) else 17,
                   checkpoint=dict(d.get("checkpoint") or {}), versions=dict(d.get("versions") or {}),
                   fp16=d.get("fp16") if isinstance(d.get("fp16"), dict) else None, int8=int8, engine=engine,
                   format=str(d.get("format", ONNX_FORMAT)), format_version=SCHEMA_VERSION, extra=extra)


def parse_metadata(props: dict[str, str], where: Any) -> ModelMetadata:
    """The metadata from a model's string properties (ONNX ``metadata_props``)."""
    if METADATA_KEY not in props:
        raise StpmError(f"{where}: not an stpm-edge model (no {METADATA_KEY!r} metadata)")
    try:
        raw = json.loads(props[METADATA_KEY])
    except (ValueError, RecursionError) as e:
        raise StpmError(f"{where}: not an stpm-edge model ({METADATA_KEY!r} metadata is not JSON: "
                        f"{str(e).splitlines()[0][:120]})") from None
    return ModelMetadata.from_dict(raw, where)


def read_onnx_metadata(path: Path) -> ModelMetadata:
    """The one reader of an exported ONNX file's metadata (weights are not loaded)."""
    import onnx  # noqa: PLC0415 - the contract stays importable without onnx

    path = Path(path)
    if not path.is_file():
        raise StpmError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors of many kinds
        raise StpmError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    return parse_metadata({p.key: p.value for p in model.metadata_props}, path)
