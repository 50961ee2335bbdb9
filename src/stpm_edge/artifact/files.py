"""The one naming rule for an exported model's files.

For the base ``DIR/model``:

======================  ===========================  ===============================
variant                 model file                   sidecar
======================  ===========================  ===============================
``fp32``                ``model.onnx``               ``model.json``
``fp16``                ``model.fp16.onnx``          ``model.fp16.json``
``int8`` (TensorRT)     ``model.int8.onnx``          ``model.int8.json``
``int8.cpu`` (ORT x86)  ``model.int8.cpu.onnx``      ``model.int8.cpu.json``
engine ``P``            ``model.P.engine``           ``model.P.engine.json``
======================  ===========================  ===============================

An engine's precision ``P`` is ``fp32``, ``fp16`` or ``int8``; it is built from the ONNX
variant of the same name. ``int8.cpu`` (uint8 activations with zero-points) is never an
engine source: TensorRT refuses non-zero zero-points.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stpm_edge.errors import StpmError

VARIANTS = ("fp32", "fp16", "int8", "int8.cpu")
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIX = ".engine"
INT8_FORMS = {"tensorrt": "int8", "cpu": "int8.cpu"}  # --int8-forms → variant


@dataclass(frozen=True)
class ModelFiles:
    """The files of one exported model: ``ModelFiles(Path("deploy"), "model")``."""

    folder: Path
    name: str = "model"

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "\\" in self.name or self.name in (".", ".."):
            raise StpmError(f"--name {self.name!r}: expected a plain file name (no folders)")

    @classmethod
    def of(cls, path: Path | str) -> tuple[ModelFiles, str]:
        """``deploy/model.int8.cpu.onnx`` → (``ModelFiles(deploy, "model")``, ``"int8.cpu"``); also
        engines (``model.fp16.engine`` → ``"fp16"``) and sidecars (``model.fp16.engine.json``)."""
        path = Path(path)
        stem = path.name
        for suffix in (ENGINE_SUFFIX + ".json", ENGINE_SUFFIX, ".onnx", ".json"):
            if stem.endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
                break
        else:
            stem = path.stem or path.name
        for variant in sorted(VARIANTS, key=len, reverse=True):
            if variant != "fp32" and stem.endswith("." + variant) and len(stem) > len(variant) + 1:
                return cls(path.parent, stem[: -len(variant) - 1]), variant
        if stem.endswith(".fp32") and len(stem) > 5:  # model.fp32.engine
            return cls(path.parent, stem[:-5]), "fp32"
        return cls(path.parent, stem), "fp32"

    def _base(self, variant: str) -> str:
        if variant not in VARIANTS:
            raise StpmError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
        return self.name if variant == "fp32" else f"{self.name}.{variant}"

    def onnx(self, variant: str = "fp32") -> Path:
        return self.folder / f"{self._base(variant)}.onnx"

    def sidecar(self, variant: str = "fp32") -> Path:
        return self.folder / f"{self._base(variant)}.json"

    def engine(self, precision: str = "fp32") -> Path:
        if precision not in ENGINE_PRECISIONS:
            raise StpmError(f"engine precision {precision!r}: expected one of {', '.join(ENGINE_PRECISIONS)} "
                            f"(the int8.cpu form is for ONNX Runtime on x86 and is never built into an engine)")
        return self.folder / f"{self.name}.{precision}{ENGINE_SUFFIX}"

    def engine_sidecar(self, precision: str = "fp32") -> Path:
        engine = self.engine(precision)
        return engine.with_name(engine.name + ".json")

    @staticmethod
    def engine_precision(variant: str) -> str:
        """The engine precision built from an ONNX variant (StpmError for the CPU INT8 form)."""
        if variant == "int8.cpu":
            raise StpmError("the int8.cpu form (uint8 activations with zero-points, for ONNX Runtime on x86) cannot "
                            "be built into a TensorRT engine; use the TensorRT form model.int8.onnx")
        if variant not in ENGINE_PRECISIONS:
            raise StpmError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
        return variant

    def calib_cache(self) -> Path:
        """TensorRT's classic-calibrator cache (text format) for this model."""
        return self.folder / "calib.cache"
