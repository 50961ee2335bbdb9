"""INT8 graphs with explicit Q/DQ, calibrated through ONNX Runtime static quantization.

Two forms are written from the same calibration images and method:

* ``tensorrt`` (``model.int8.onnx``) — what TensorRT 8.5–11 consumes as explicit
  quantization: int8 activations and weights, all zero-points 0 (symmetric), per-channel
  weights, biases left float (ONNX Runtime's int32 bias Q/DQ breaks TensorRT's parser).
  ONNX Runtime runs it too, but its x86 kernels only fuse part of it (symmetric int8 keeps
  every ReLU/ReLU6 as a float op between Q/DQ pairs), so on a CPU it is barely faster
  than FP32.
* ``cpu`` (``model.int8.cpu.onnx``) — ONNX Runtime's recommended x86 form (uint8
  activations with zero-points, int8 per-channel weights): ReLU/ReLU6 fold into the
  quantized convolutions and residual additions run as ``QLinearAdd``. Not for TensorRT.
  A method may rewrite the graph for this form first (its ``onnx_rewrites()["int8.cpu"]``;
  STPM's splits its fused trunk in two, because ONNX Runtime's quantized grouped 1×1
  convolutions are slow); the rewritten graph is calibrated on its own, and precomputed
  (entropy) ranges of the original tensors go to the tensors the rewrite derived from them.

Only the method's low-precision regions are quantized (the node-name scopes of the model's
metadata, ``lowp.int8``), except slices at their border; preprocessing and the method's head
stay float. ``keep_float`` leaves parts of the regions in float, the remedy when INT8 loses
accuracy: ``first`` / ``last`` (the convolutions at the regions' input / feeding the head) or
a module by name (``stages.0``, ``stages.0.0/conv_pw``: every node under it). On the
sample-trained STPM efficientnet_lite0 of BENCHMARKS.md (machine B) the symmetric form lost
18 pt image AUROC; ``stages.0`` alone, left float, brought it back to -1.5 pt.
"""
from __future__ import annotations

import contextlib
import inspect
import sys
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from stpm_edge.artifact import ModelMetadata, parse_metadata
from stpm_edge.artifact.metadata import in_scopes
from stpm_edge.calibration.qdq_form import align_activation_inputs, check_tensorrt_form  # noqa: F401 (re-exported)
from stpm_edge.calibration.reader import CalibrationFrames, OrtReader
from stpm_edge.errors import StpmError, first_line

logger = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
FORMS = ("tensorrt", "cpu")
KEEP_FLOAT = ("first", "last")
CPU_FORMATS = ("qdq", "qoperator")
FORM_SUFFIX = {"tensorrt": "", "cpu": ".cpu"}  # model.int8.onnx, model.int8.cpu.onnx
_NOT_QUANTIZED = {"Slice"}  # splits of fused branches at a region's border
# Entropy calibration as TensorRT's does it: 2048-bin histograms, the clipping threshold chosen by
# KL divergence over int8's levels. ONNX Runtime's quantize_static cannot pass histogram sizes to
# its calibrator, whose defaults (128 bins, 128 quantized bins) leave a single candidate, the full
# range: "entropy" through quantize_static is minmax (measured: identical scales). So the entropy
# ranges are computed here and handed to quantize_static through its calibration cache.
ENTROPY_BINS = 2048
ENTROPY_QUANTIZED_BINS = 255


@dataclass(frozen=True)
class QuantizeOptions:
    # minmax by default: STPM's anomalies are the tails of the feature distribution, which ranges
    # fitted to good images by clipping (entropy, percentile) cut off (measured: tests/BENCHMARKS.md).
    method: str = "minmax"
    keep_float: tuple[str, ...] = ()
    percentile: float = 99.999
    # The cpu form (ONNX Runtime x86) only; the TensorRT form is fixed by what TensorRT parses.
    cpu_format: str = "qdq"  # qdq | qoperator (QLinearConv etc. written directly)
    cpu_per_channel: bool = True  # per-output-channel weight scales (False: one scale per weight tensor)
    cpu_reduce_range: bool = False  # 7-bit weights (for CPUs without VNNI, against u8×s8 saturation)
    cpu_quantize_bias: bool = False  # int32 biases, so a Conv with bias fuses into one QLinearConv

    def validated(self) -> QuantizeOptions:
        if self.method not in METHODS:
            raise StpmError(f"calibration method {self.method!r}: expected one of {', '.join(METHODS)}")
        bad = [k for k in self.keep_float if not k or k.startswith("/") or k.endswith("/")]
        if bad:
            raise StpmError(f"keep-float {', '.join(bad)!r}: expected first, last or a trunk module name like stages.0")
        if not 90.0 <= self.percentile < 100.0:
            raise StpmError(f"percentile {self.percentile}: expected 90 <= p < 100")
        if self.cpu_format not in CPU_FORMATS:
            raise StpmError(f"cpu INT8 format {self.cpu_format!r}: expected one of {', '.join(CPU_FORMATS)}")
        return self


@dataclass
class QuantizeReport:
    quantized_nodes: list[str]
    float_convs: list[str] = field(default_factory=list)
    seconds: float = 0.0


def metadata_of(model: onnx.ModelProto, where: object = "model") -> ModelMetadata:
    return parse_metadata({p.key: p.value for p in model.metadata_props}, where)


def edge_convs(model: onnx.ModelProto, which: str, scopes: Sequence[str]) -> list[str]:
    """Names of the regions' first convolution(s) or last convolution(s) feeding the head."""
    trunk = [n for n in model.graph.node if in_scopes(n.name, scopes)]
    producer = {o: n for n in trunk for o in n.output}
    if which == "first":
        inside = set(producer)
        return [n.name for n in trunk if n.op_type == "Conv" and n.input and n.input[0] not in inside]
    trunk_ids = {id(n) for n in trunk}
    leaving = {i for n in model.graph.node if id(n) not in trunk_ids for i in n.input if i in producer}
    found: list[str] = []
    stack, seen = list(leaving), set()
    while stack:  # walk back from every tensor leaving the trunks to the nearest Conv
        t = stack.pop()
        if t in seen or t not in producer:
            continue
        seen.add(t)
        node = producer[t]
        if node.op_type == "Conv":
            if node.name not in found:
                found.append(node.name)
        else:
            stack.extend(node.input)
    return found


def region_modules(model: onnx.ModelProto, scopes: Sequence[str]) -> list[str]:
    """The top-level modules of the regions (for every backbone: ``stem``, ``stages.0``, ``stages.1``, ...), in graph order."""
    found: list[str] = []
    for n in model.graph.node:
        scope = next((s for s in scopes if n.name.startswith(s)), None)
        parts = n.name[len(scope):].split("/") if scope else []
        if len(parts) > 1 and parts[0] not in found:  # <module>/.../<op>
            found.append(parts[0])
    return found


def module_nodes(model: onnx.ModelProto, module: str, scopes: Sequence[str]) -> list[str]:
    """Region nodes under the module ``module`` (a path of module names: ``stages.0``, ``stages.0.0/conv_pw``)."""
    key = f"/{module.strip('/')}/"
    return [n.name for n in model.graph.node if in_scopes(n.name, scopes) and key in n.name]


def nodes_to_quantize(model: onnx.ModelProto, scopes: Sequence[str],
                      keep_float: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(region nodes to quantize, nodes kept float)."""
    keep: list[str] = []
    for which in keep_float:
        found = edge_convs(model, which, scopes) if which in KEEP_FLOAT else module_nodes(model, which, scopes)
        if not found:
            raise StpmError(f"--keep-float {which}: no such part of the quantized regions (first, last, or a module: "
                            f"{', '.join(region_modules(model, scopes))}, or a path below one like stages.0.0/conv_pw)")
        keep += [name for name in found if name not in keep]
    names = [n.name for n in model.graph.node
             if in_scopes(n.name, scopes) and n.op_type not in _NOT_QUANTIZED and n.name not in keep]
    if not names:
        raise StpmError(f"the graph has no nodes under {', '.join(scopes) or '(no region)'}: not an stpm-edge "
                        f"export of this version (re-export it)")
    return names, keep


def _ort_quant():
    try:
        from onnxruntime import quantization as q  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
        raise StpmError(f"INT8 quantization needs onnxruntime with its quantization tools ({e})") from None
    return q


def _method(q, name: str):
    return {"entropy": q.CalibrationMethod.Entropy, "minmax": q.CalibrationMethod.MinMax,
            "percentile": q.CalibrationMethod.Percentile}[name]


def entropy_ranges(fp32_path: Path, reader: OrtReader, work_dir: Path):
    """Per-tensor KL-optimal ranges (ONNX Runtime ``TensorsData``), clipped to what was observed.

    The histogram is symmetric around zero; a tensor that never goes negative (after a ReLU)
    keeps its observed minimum, so the asymmetric CPU form does not waste half its levels.
    """
    from onnxruntime.quantization import calibrate as cal  # noqa: PLC0415
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry  # noqa: PLC0415

    calibrator = cal.create_calibrator(
        Path(fp32_path), sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        augmented_model_path=str(work_dir / "augmented.onnx"), calibrate_method=cal.CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS})
    calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    seen = calibrator.collector.histogram_dict  # tensor -> (hist, edges, min, max, threshold)
    clipped = {}
    for name, data in ranges.items():
        low, high = data.range_value
        clipped[name] = cal.TensorData(lowest=np.float32(max(low, seen[name][2])),
                                       highest=np.float32(min(high, seen[name][3])), hist=data.hist, bins=data.bins)
    return cal.TensorsData(cal.CalibrationMethod.Entropy, clipped)


def quantize(fp32_path: Path, frames: CalibrationFrames, outputs: dict[str, Path], options: QuantizeOptions,
             progress: Callable[[], None] | None = None) -> QuantizeReport:
    """Calibrate ``fp32_path`` on ``frames`` once and write each requested form.

    ``outputs`` maps a form (``tensorrt`` | ``cpu``) to the path to write (the caller writes
    atomically and adds metadata). ``progress`` is called once per calibration batch.
    """
    import time  # noqa: PLC0415

    options = options.validated()
    q = _ort_quant()
    t0 = time.perf_counter()
    model = onnx.load(str(fp32_path))
    meta = metadata_of(model, fp32_path)
    names, keep = nodes_to_quantize(model, meta.lowp.int8, options.keep_float)
    # Biases stay float, so ONNX Runtime must not enlarge weight scales to fit int32 biases.
    extra_common = {"QuantizeBias": False, "QDQDisableWeightAdjustForInt32Bias": True, "WeightSymmetric": True}
    if options.method == "percentile":
        extra_common["CalibPercentile"] = options.percentile
    forms = {
        "tensorrt": dict(activation_type=q.QuantType.QInt8, extra={"ActivationSymmetric": True},
                         quant_format=q.QuantFormat.QDQ, per_channel=True, reduce_range=False),
        "cpu": dict(activation_type=q.QuantType.QUInt8,
                    extra={"ActivationSymmetric": False, "QuantizeBias": options.cpu_quantize_bias,
                           "QDQDisableWeightAdjustForInt32Bias": not options.cpu_quantize_bias},
                    quant_format=q.QuantFormat.QOperator if options.cpu_format == "qoperator" else q.QuantFormat.QDQ,
                    per_channel=options.cpu_per_channel, reduce_range=options.cpu_reduce_range),
    }
    has_cache = "calibration_cache_path" in inspect.signature(q.quantize_static).parameters
    reader = OrtReader(frames, on_batch=progress)
    with tempfile.TemporaryDirectory(prefix="stpm-calib-") as tmp:
        # ONNX Runtime writes helper files beside the model it quantizes (``<name>-inferred.onnx``):
        # work on a private copy so that nothing is ever left beside the user's model.
        fp32_path = Path(tmp) / "source.onnx"
        onnx.save(model, str(fp32_path))
        cache = Path(tmp) / "ranges.json"
        if options.method == "entropy":
            if has_cache:
                logger.info("entropy calibration: a KL search over %d-bin histograms per tensor (slow: about a "
                            "second per quantized tensor)", ENTROPY_BINS)
                with _quiet_root_logger():
                    try:
                        ranges = entropy_ranges(fp32_path, reader, Path(tmp))
                    except Exception as e:  # noqa: BLE001 - ORT raises many types
                        raise StpmError(f"INT8 entropy calibration failed ({first_line(e)})") from e
                from onnxruntime.quantization.calibrate import save_tensors_data  # noqa: PLC0415

                save_tensors_data(ranges, cache)
            else:
                logger.warning("this onnxruntime cannot take precomputed ranges: its entropy calibration "
                               "degenerates to the full range (minmax); upgrade onnxruntime for real entropy ranges")
        precomputed = cache.exists()  # entropy ranges; otherwise the first form's calibration writes the cache
        for form, out in outputs.items():
            if form not in forms:
                raise StpmError(f"INT8 form {form!r}: expected one of {', '.join(FORMS)}")
            source, form_names, form_cache = Path(fp32_path), names, cache
            if form == "cpu":
                source, form_names, form_cache = _cpu_source(Path(fp32_path), model, meta, names, cache,
                                                             precomputed, Path(tmp))
            reader.rewind()
            kwargs = {"calibration_cache_path": str(form_cache)} if has_cache else {}
            with _quiet_root_logger():
                try:
                    f = forms[form]
                    q.quantize_static(
                        str(source), str(out), reader, quant_format=f["quant_format"], per_channel=f["per_channel"],
                        reduce_range=f["reduce_range"], activation_type=f["activation_type"],
                        weight_type=q.QuantType.QInt8, nodes_to_quantize=form_names,
                        calibrate_method=_method(q, options.method),
                        extra_options={**extra_common, **forms[form]["extra"]}, **kwargs)
                except StpmError:
                    raise
                except Exception as e:  # noqa: BLE001 - ORT raises many types
                    raise StpmError(f"INT8 quantization failed ({first_line(e)})") from e
            try:
                written = onnx.load(str(out))
            except Exception as e:  # noqa: BLE001 - a truncated write (full disk) decodes as garbage
                raise StpmError(f"INT8: the quantized {form} graph could not be written completely "
                                f"({type(e).__name__}; disk full?)") from None
            if align_activation_inputs(written):
                onnx.save(written, str(out))
    return QuantizeReport(names, keep, time.perf_counter() - t0)


def _cpu_source(fp32_path: Path, model: onnx.ModelProto, meta: ModelMetadata, names: list[str], cache: Path,
                precomputed: bool, tmp: Path) -> tuple[Path, list[str], Path]:
    """What the ``cpu`` form is quantized from: the method's rewrite of the graph for that form
    where it has one (e.g. STPM's split of its fused trunk), with the node list mapped onto the rewritten
    nodes, and the ranges cache to use. A rewritten graph is calibrated on its own, except for
    ``precomputed`` (entropy) ranges, which each derived tensor takes from its original
    instead of a second KL search. The rewrite returns an object with ``model``, ``nodes``
    (original node → new nodes) and ``tensors`` (original tensor → new tensors)."""
    from stpm_edge.models.registry import get_method  # noqa: PLC0415 - the method that made the graph

    rewrite = get_method(meta.arch).onnx_rewrites().get("int8.cpu")
    if rewrite is None:
        return fp32_path, names, cache
    try:
        un = rewrite(model, meta.lowp.int8)
    except ValueError as e:  # the rewrite does not apply to this graph
        logger.debug("cpu INT8 form from the graph as exported (%s)", e)
        return fp32_path, names, cache
    source = tmp / "rewritten.onnx"
    onnx.save(un.model, str(source))
    mapped = [h for n in names for h in un.nodes.get(n, (n,))]
    form_cache = tmp / "ranges.rewritten.json"
    if not precomputed:
        return source, mapped, form_cache
    from onnxruntime.quantization.calibrate import TensorsData, load_tensors_data, save_tensors_data  # noqa: PLC0415

    ranges = load_tensors_data(cache)
    data = {}
    for name, value in ranges.items():
        for target in un.tensors.get(name, (name,)):  # each derived tensor keeps its original's range
            data[target] = value
    save_tensors_data(TensorsData(ranges.calibration_method, data), form_cache)
    return source, mapped, form_cache


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer logs per-tensor chatter on the root logger and prints progress
    on stdout (which must stay clean for ``--json``): keep the first for debug, send the
    second to stderr."""
    root = logging.getLogger()
    level = root.level
    if level > logging.DEBUG:
        root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        root.setLevel(level)
