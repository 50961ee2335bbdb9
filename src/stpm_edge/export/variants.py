"""Write the FP16 and INT8 variants of an exported ``model.onnx`` beside it, atomically.

* ``model.fp16.onnx`` (+ ``model.fp16.json``): trunks in FP16, head FP32
  (:func:`stpm_edge.export.precision.to_fp16`).
* ``model.int8.onnx`` (TensorRT form) and ``model.int8.cpu.onnx`` (ONNX Runtime x86 form),
  from one calibration (:mod:`stpm_edge.calibration.quantize`). With a validation set and a
  budget, the INT8 files are evaluated *before* they are moved into place and are not
  written at all when INT8 loses more AUROC than allowed.

Each variant carries the FP32 model's ``stpm_edge`` metadata plus ``precision`` and, for
INT8, how it was calibrated.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from stpm_edge.artifact import METADATA_KEY, Int8Info, ModelFiles, ModelMetadata
from stpm_edge.artifact.files import INT8_FORMS
from stpm_edge.calibration.quantize import (FORMS, QuantizeOptions, check_tensorrt_form, metadata_of, quantize,
                                             region_modules)
from stpm_edge.calibration.reader import CalibrationFrames
from stpm_edge.data.io import atomic_path
from stpm_edge.errors import StpmError
from stpm_edge.eval.compare import GateVerdict, VariantResult, compare_backends, gate
from stpm_edge.export.precision import precision_of, to_fp16

logger = logging.getLogger(__name__)


class GateFailed(StpmError):
    """The accuracy gate refused the INT8 files; nothing was written."""

    def __init__(self, verdict: GateVerdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


@dataclass
class VariantFiles:
    onnx_path: Path
    json_path: Path
    metadata: ModelMetadata


@dataclass
class Int8Result:
    files: dict[str, VariantFiles]  # by form
    quantized_nodes: int
    float_convs: list[str]
    calib_images: int
    seconds: float
    comparison: list[VariantResult] = field(default_factory=list)
    verdict: GateVerdict | None = None
    keep_float: tuple[str, ...] = ()  # what was asked (--keep-float), or what auto chose


def _load_fp32(path: Path) -> tuple[onnx.ModelProto, ModelMetadata]:
    path = Path(path)
    if not path.is_file():
        raise StpmError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf errors of many kinds
        raise StpmError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    meta = metadata_of(model, path)
    if meta.precision != "fp32" or precision_of(model) != "fp32":
        raise StpmError(f"{path}: is already a {meta.precision if meta.precision != 'fp32' else precision_of(model)} "
                        f"model; make precision variants from the FP32 model.onnx")
    return model, meta


def variant_paths(fp32_path: Path, variant: str) -> tuple[Path, Path]:
    """``dir/model.onnx`` + ``fp16`` → ``dir/model.fp16.onnx``, ``dir/model.fp16.json`` (:class:`ModelFiles`)."""
    files, _ = ModelFiles.of(fp32_path)
    return files.onnx(variant), files.sidecar(variant)


def _save(model: onnx.ModelProto, meta: ModelMetadata, onnx_tmp: Path, json_tmp: Path) -> None:
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    onnx.save(model, str(onnx_tmp))
    json_tmp.write_text(meta.to_json(indent=2) + "\n")


def write_fp16(fp32_path: Path) -> VariantFiles:
    """``model.fp16.onnx`` + sidecar beside the FP32 ``model.onnx``."""
    model, meta = _load_fp32(fp32_path)
    half = to_fp16(model, meta.lowp.fp16)
    meta = replace(meta, precision="fp16",
                   fp16={"scope": list(meta.lowp.fp16), "fp32": "preprocessing, the method's head, I/O"})
    onnx_path, json_path = variant_paths(fp32_path, "fp16")
    with atomic_path(onnx_path) as t_onnx, atomic_path(json_path) as t_json:
        _save(half, meta, t_onnx, t_json)
    return VariantFiles(onnx_path, json_path, meta)


def write_int8(fp32_path: Path, frames: CalibrationFrames, options: QuantizeOptions = QuantizeOptions(),
               forms: tuple[str, ...] = FORMS, *, validate: Callable[[dict[str, Path]], tuple[list[VariantResult], GateVerdict]]
               | None = None, progress: Callable[[], None] | None = None) -> Int8Result:
    """Calibrate and write the INT8 forms beside ``fp32_path``.

    ``validate`` (optional) receives the temporary paths of the finished files (FP32 first)
    and returns the comparison and the gate verdict; a failed verdict raises StpmError with
    its explanation and nothing is written.
    """
    t0 = time.perf_counter()
    _, meta = _load_fp32(fp32_path)
    forms = tuple(dict.fromkeys(forms))
    bad = set(forms) - set(FORMS)
    if bad or not forms:
        raise StpmError(f"INT8 forms {', '.join(sorted(bad)) or '(none)'}: expected any of {', '.join(FORMS)}")
    targets = {form: variant_paths(fp32_path, INT8_FORMS[form]) for form in forms}
    with contextlib.ExitStack() as stack:
        tmp = {form: (stack.enter_context(atomic_path(o)), stack.enter_context(atomic_path(j)))
               for form, (o, j) in targets.items()}
        report = quantize(Path(fp32_path), frames, {f: t[0] for f, t in tmp.items()}, options, progress)
        files: dict[str, VariantFiles] = {}
        for form, (t_onnx, t_json) in tmp.items():
            q = onnx.load(str(t_onnx))
            if form == "tensorrt":
                problems = check_tensorrt_form(q)
                if problems:
                    raise StpmError(f"internal: the INT8 graph is not in TensorRT's form ({problems[0]})")
            m = replace(meta, precision="int8", int8=Int8Info(
                form=form, method=options.method, images=len(frames.paths), seed=frames.seed,
                calib_folder=str(frames.folder), keep_float=tuple(report.float_convs),
                quantized_nodes=len(report.quantized_nodes),
                target="TensorRT explicit quantization (symmetric int8)" if form == "tensorrt"
                else "ONNX Runtime x86 CPU (uint8 activations, not for TensorRT)"))
            _save(q, m, t_onnx, t_json)
            files[form] = VariantFiles(targets[form][0], targets[form][1], m)
        result = Int8Result(files, len(report.quantized_nodes), report.float_convs, len(frames.paths),
                            time.perf_counter() - t0, keep_float=tuple(options.keep_float))
        if validate is not None:
            result.comparison, result.verdict = validate({"fp32": Path(fp32_path), **{f: t[0] for f, t in tmp.items()}})
            if not result.verdict.passed:
                raise GateFailed(result.verdict)
    return result


def auto_keep_float_ladder(model: onnx.ModelProto) -> list[tuple[str, ...]]:
    """What ``--keep-float auto`` tries, in order: all quantized, then the regions' first two
    modules float, then the first three (symmetric INT8 hurts most in the early layers:
    BENCHMARKS.md, precision section)."""
    modules = region_modules(model, metadata_of(model).lowp.int8)
    return [()] + [tuple(modules[:k]) for k in (2, 3) if len(modules) > k]


def write_int8_auto(fp32_path: Path, frames: CalibrationFrames, options: QuantizeOptions, forms: tuple[str, ...],
                    *, validate: Callable[[dict[str, Path]], tuple[list[VariantResult], GateVerdict]] | None,
                    progress: Callable[[], None] | None = None) -> Int8Result:
    """:func:`write_int8` with the first rung of :func:`auto_keep_float_ladder` that passes the gate."""
    if validate is None:
        raise StpmError("--keep-float auto needs --val DIR and --max-auroc-drop PT: it keeps the first setting "
                        "that passes the accuracy gate")
    ladder = auto_keep_float_ladder(_load_fp32(fp32_path)[0])
    failures = []
    for keep in ladder:
        try:
            result = write_int8(fp32_path, frames, replace(options, keep_float=keep), forms, validate=validate,
                                progress=progress)
        except GateFailed as e:
            drops = f"image {-e.verdict.image_drop_pt:+.2f} pt"
            if e.verdict.pixel_drop_pt is not None:
                drops += f", pixel {-e.verdict.pixel_drop_pt:+.2f} pt"
            failures.append(f"{','.join(keep) or 'nothing'} float: {drops}")
            logger.info("--keep-float auto: %s", failures[-1])
            continue
        if failures:
            logger.info("--keep-float auto: %s float passes the gate", ",".join(keep))
        return result
    both = (" (the gate judges the worse of the forms: calibrate each alone, e.g. --int8-forms tensorrt for a "
            "Jetson)") if len(forms) > 1 else ""
    raise StpmError(f"INT8 fails the accuracy gate with every --keep-float auto setting ({'; '.join(failures)}), "
                    f"so nothing was written{both}; deploy FP16 (--fp16), or try more calibration images or another "
                    f"method")


def validator(dataset, max_drop_pt: float, device: str = "cpu", batch_size: int = 16,
              progress: Callable[[int], None] | None = None
              ) -> Callable[[dict[str, Path]], tuple[list[VariantResult], GateVerdict]]:
    """A ``validate`` callback for :func:`write_int8`: compare on ``dataset``; gate the worst form."""
    from stpm_edge.eval.evaluate import load_test  # noqa: PLC0415
    from stpm_edge.runtime.backends.select import open_backend  # noqa: PLC0415

    if not dataset.has_test:
        raise StpmError(f"{dataset.root}: --val needs a test split with good and defective images")

    def run(paths: dict[str, Path]) -> tuple[list[VariantResult], GateVerdict]:
        test = load_test(dataset.test, progress)
        backends = [open_backend(p, device) for p in paths.values()]
        try:
            results = compare_backends(backends, list(paths), test, batch_size, progress)
        finally:
            for b in backends:
                b.close()
        verdicts = [gate(results[0], r, max_drop_pt) for r in results[1:]]
        worst = min(verdicts, key=lambda v: (v.passed, -max(v.image_drop_pt, v.pixel_drop_pt or -1e9)))
        return results, worst

    return run
