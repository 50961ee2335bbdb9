"""What a TensorRT engine file is, without importing TensorRT: names, versions, the sidecar.

An engine ``model.<precision>.engine`` (``fp32``, ``fp16`` or ``int8``) is always written with a
sidecar ``model.<precision>.engine.json`` (the engine's name plus ``.json``, so it never
collides with ``model.fp16.json``, the sidecar of ``model.fp16.onnx``). The sidecar is the
model's ``stpm_edge`` metadata (the same dict the ONNX file carries: ``input``, ``outputs``,
``threshold``, ...) with ``"precision"`` set and an ``"engine"`` block describing the build::

    "engine": {"format": "stpm-edge/tensorrt-engine", "format_version": 1,
               "file": "model.fp16.engine", "sha256": "...", "bytes": 123,
               "tensorrt": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"},
               "source": {"file": "model.fp16.onnx", "sha256": "..."},
               "strongly_typed": true, "int8_method": null, "dla_core": null,
               "profile": {"min": [1, 480, 640, 3], "opt": [...], "max": [...]} or null,
               "options": {...}, "notes": [...], "built_at": "...", "seconds": 41.2}

A TensorRT engine runs only with the TensorRT release that built it and on the GPU model it
was built for (TensorRT developer guide, "Serialized engines are not portable across
platforms or TensorRT versions"; engines are specific to the exact GPU model).
:func:`check_compat` applies that rule to a sidecar and the running machine, so that
loading fails with one line that says how to rebuild instead of TensorRT's deserialization
error.

Version strings seen in the wild: ``8.5.2.2`` (JetPack 5.1 ``tensorrt.__version__``),
``8.6.2.3`` (JetPack 6.0), ``10.3.0`` (pip wheels print three components; the tar build
of the same release is ``10.3.0.26``), ``11.0.0.dev`` (pre-releases).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stpm_edge.errors import StpmError

ENGINE_FORMAT = "stpm-edge/tensorrt-engine"
ENGINE_FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIX = ".engine"
CPU_FORM_SUFFIX = ".int8.cpu.onnx"

_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[.\-+]?([A-Za-z][\w.\-+]*))?\s*$")


@dataclass(frozen=True)
class TrtVersion:
    """A parsed ``tensorrt.__version__``; ``build`` and ``suffix`` are optional (``None``/``""``)."""

    major: int
    minor: int
    patch: int
    build: int | None
    suffix: str
    raw: str

    @property
    def release(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def __str__(self) -> str:
        return self.raw


def parse_trt_version(text: Any) -> TrtVersion:
    """``"8.5.2.2"`` → 8.5.2 build 2; ``"10.3.0"``; ``"11.0.0.dev"`` → suffix ``dev`` (one-line StpmError)."""
    m = _VERSION.match(str(text))
    if not m:
        raise StpmError(f"TensorRT version {text!r}: expected major.minor[.patch[.build]]")
    major, minor, patch, build, suffix = m.groups()
    return TrtVersion(int(major), int(minor), int(patch or 0), None if build is None else int(build),
                      (suffix or "").lower(), str(text).strip())


def same_trt_release(built: TrtVersion, running: TrtVersion) -> bool:
    """Whether an engine built by ``built`` can be deserialized by ``running``.

    The release (major.minor.patch) and any pre-release suffix must be equal; the build
    number is compared only when both strings have one (pip prints ``10.3.0`` for the
    ``10.3.0.26`` build).
    """
    if built.release != running.release or built.suffix != running.suffix:
        return False
    return built.build is None or running.build is None or built.build == running.build


@dataclass(frozen=True)
class GpuInfo:
    """A CUDA device as the sidecar records it; ``compute_capability`` like ``"8.7"``."""

    name: str
    compute_capability: str
    index: int = 0
    total_memory_mib: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "compute_capability": self.compute_capability, "index": self.index,
                "total_memory_mib": self.total_memory_mib}


# -- file names ---------------------------------------------------------------------------

def split_model_name(path: Path) -> tuple[Path, str]:
    """``dir/model.fp16.onnx`` → (``dir/model``, ``"fp16"``); ``dir/model.onnx`` → (``dir/model``, ``"fp32"``).

    Also accepts engine names (``model.int8.engine`` → ``int8``).
    """
    path = Path(path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    for p in PRECISIONS:
        if stem.endswith("." + p):
            return path.with_name(stem[: -len(p) - 1]), p
    return path.with_name(stem), "fp32"


def onnx_path_for(base: Path, precision: str) -> Path:
    """The ONNX file of ``precision`` beside base ``dir/model``: model.onnx, model.fp16.onnx, model.int8.onnx."""
    base = Path(base)
    return base.with_name(f"{base.name}.onnx") if precision == "fp32" else base.with_name(f"{base.name}.{precision}.onnx")


def is_cpu_form(path: Path) -> bool:
    """``model.int8.cpu.onnx``: ONNX Runtime's x86 INT8 form (uint8 activations with zero-points,
    ``stpm-calibrate --int8-forms cpu``), which is never a TensorRT engine source."""
    name = Path(path).name
    return name.endswith(CPU_FORM_SUFFIX)


def no_engine_reason(onnx_path: Path) -> str:
    """Why ``onnx_path`` has no engine to run: the CPU form never has one, others lack the file."""
    onnx_path = Path(onnx_path)
    if is_cpu_form(onnx_path):
        base = onnx_path.name[: -len(CPU_FORM_SUFFIX)]
        return (f"{onnx_path.name} is ONNX Runtime's CPU form of the INT8 model (asymmetric uint8, not for "
                f"TensorRT): no engine is built from it; TensorRT's INT8 source is {base}.int8.onnx")
    return f"no TensorRT engine {engine_path_for(onnx_path).name} beside {onnx_path.name}"


def engine_path_for(model_path: Path, precision: str | None = None) -> Path:
    """``dir/model.<precision>.engine`` for a model file (precision default: the file's own).

    Refuses (one-line StpmError) the CPU INT8 form, which would otherwise name an engine
    ``model.int8.cpu.fp32.engine``.
    """
    if is_cpu_form(Path(model_path)):
        raise StpmError(no_engine_reason(Path(model_path)))
    base, own = split_model_name(Path(model_path))
    p = precision or own
    if p not in PRECISIONS:
        raise StpmError(f"precision {p!r}: expected one of {', '.join(PRECISIONS)}")
    return base.with_name(f"{base.name}.{p}{ENGINE_SUFFIX}")


def sidecar_path(engine_path: Path) -> Path:
    """``model.fp16.engine`` → ``model.fp16.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


# -- the sidecar --------------------------------------------------------------------------

def rebuild_hint(sidecar: dict[str, Any] | None) -> str:
    """``stpm-export model.pt --fp16`` (run on the target machine) for the engine's precision."""
    ckpt = "MODEL.pt"
    precision = "fp32"
    if isinstance(sidecar, dict):
        c = sidecar.get("checkpoint")
        if isinstance(c, dict) and isinstance(c.get("file"), str):
            ckpt = c["file"]
        if sidecar.get("precision") in PRECISIONS:
            precision = sidecar["precision"]
    flag = {"fp32": "", "fp16": " --fp16", "int8": " --int8"}[precision]
    return f"rebuild it on this machine: stpm-export {ckpt}{flag}"


def validate_sidecar(meta: Any, where: str) -> dict[str, Any]:
    """The sidecar dict, or a one-line StpmError naming what is missing."""
    if not isinstance(meta, dict):
        raise StpmError(f"{where}: not an stpm-edge engine sidecar (not a JSON object)")
    eng = meta.get("engine")
    if not isinstance(eng, dict) or eng.get("format") != ENGINE_FORMAT:
        raise StpmError(f"{where}: not an stpm-edge engine sidecar (no 'engine' block of format {ENGINE_FORMAT})")
    if eng.get("format_version") != ENGINE_FORMAT_VERSION:
        raise StpmError(f"{where}: engine sidecar format_version {eng.get('format_version')!r} is not "
                        f"{ENGINE_FORMAT_VERSION}; {rebuild_hint(meta)}")
    for key in ("tensorrt", "gpu"):
        if key not in eng:
            raise StpmError(f"{where}: engine sidecar has no engine.{key}; {rebuild_hint(meta)}")
    gpu = eng["gpu"]
    if not isinstance(gpu, dict) or "compute_capability" not in gpu:
        raise StpmError(f"{where}: engine sidecar has no engine.gpu.compute_capability; {rebuild_hint(meta)}")
    if "input" not in meta:
        raise StpmError(f"{where}: engine sidecar has no 'input' description; {rebuild_hint(meta)}")
    return meta


def read_sidecar(engine_path: Path) -> dict[str, Any]:
    """The sidecar of ``engine_path`` (one-line StpmError when missing or malformed)."""
    engine_path = Path(engine_path)
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise StpmError(f"{engine_path}: no sidecar {side.name} next to it (it records the model's input, "
                        f"thresholds and the TensorRT/GPU it was built for); {rebuild_hint(None)}")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StpmError(f"{side}: not a readable engine sidecar ({e})") from None
    return validate_sidecar(meta, str(side))


def check_compat(sidecar: dict[str, Any], *, trt_version: str, gpu: GpuInfo, engine_path: Any) -> list[str]:
    """Refuse (StpmError) an engine built by another TensorRT release or for another GPU architecture.

    Returns warnings (GPU name differs but the compute capability is the same: TensorRT runs
    it, though tactics were timed on the other model).
    """
    eng = sidecar["engine"]
    built_v = parse_trt_version(eng["tensorrt"])
    here_v = parse_trt_version(trt_version)
    if not same_trt_release(built_v, here_v):
        raise StpmError(f"{engine_path}: built with TensorRT {built_v} but this machine has TensorRT {here_v}; "
                        f"{rebuild_hint(sidecar)}")
    built_gpu = eng["gpu"]
    built_cc = str(built_gpu.get("compute_capability"))
    if built_cc != str(gpu.compute_capability):
        raise StpmError(f"{engine_path}: built for {built_gpu.get('name', 'a GPU')} (compute capability {built_cc}) "
                        f"but this GPU is {gpu.name} (compute capability {gpu.compute_capability}); "
                        f"{rebuild_hint(sidecar)}")
    warnings = []
    if built_gpu.get("name") and built_gpu.get("name") != gpu.name:
        warnings.append(f"{engine_path}: built on {built_gpu['name']}, running on {gpu.name} (same compute "
                        f"capability {built_cc}); it runs, but for best speed {rebuild_hint(sidecar)}")
    return warnings
