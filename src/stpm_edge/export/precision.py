"""Precision variants of an exported graph, written into the ONNX file itself.

TensorRT 10.1 deprecated and TensorRT 11 removed the precision builder flags and implicit
INT8 calibrators, so precision lives in the graph: Casts for FP16 (this module), Q/DQ nodes
for INT8 (:mod:`stpm_edge.calibration.quantize`). Both lower only the method's
low-precision regions, ONNX node-name scopes recorded in the model's metadata
(``ModelMetadata.lowp``, from the method's ``low_precision``); preprocessing and the method's
head stay FP32.

Why heads stay FP32 (STPM's, for example): per-level squared distances of normal pixels are
~1e-3 and the map is their product over three levels (~1e-9), below FP16's smallest subnormal
(6e-8), so an FP16 head flushes normal pixels to zero and loses the low end of the score
distribution (``tests/test_precision.py`` measures it). L2 normalisation (sum of squares) and
memory-bank distances can also overflow FP16's 65504.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from stpm_edge.artifact.metadata import in_scopes
from stpm_edge.errors import StpmError

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
FP16_SUFFIX = "__fp16"


def variant_name(name: str, precision: str) -> str:
    """File stem of a precision variant: ``model`` → ``model.fp16`` (fp32 keeps ``model``)."""
    if precision not in PRECISIONS:
        raise StpmError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return name if precision == "fp32" else f"{name}.{precision}"


def region_nodes(model: onnx.ModelProto, scopes: Sequence[str]) -> list[onnx.NodeProto]:
    """The nodes of the low-precision regions (StpmError if the graph has none: not an stpm-edge export)."""
    nodes = [n for n in model.graph.node if in_scopes(n.name, scopes)]
    if not nodes:
        raise StpmError(f"the graph has no nodes under {', '.join(scopes) or '(no region)'}: not an stpm-edge "
                        f"export of this version (re-export it)")
    return nodes


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


def topological_sort(nodes: Iterable[onnx.NodeProto], available: Iterable[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is produced before use (stable for sorted input)."""
    pending = list(nodes)
    ready = set(available) | {""}
    out: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise StpmError(f"internal: graph has a cycle or a missing input at node {rest[0].name!r}")
        pending = rest
    return out


def to_fp16(model: onnx.ModelProto, scopes: Sequence[str] | None) -> onnx.ModelProto:
    """A copy of ``model`` whose nodes under ``scopes`` compute in FP16, with Casts at the border.

    Float inputs that enter the region from outside get one Cast to FP16 each; float
    constants the region uses get an FP16 copy; float tensors leaving the region are cast
    back to FP32 under their original names. Graph inputs and outputs keep their types.
    Pass ``scopes=None`` to convert every node (the all-FP16 graph, for comparison only).
    """
    m = copy.deepcopy(model)
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    g = m.graph
    types = _elem_types(m)
    region = region_nodes(m, scopes) if scopes is not None else list(g.node)
    scope = scopes[0] if scopes else ""
    region_ids = {id(n) for n in region}
    produced = {o for n in region for o in n.output}
    initializers = {t.name: t for t in g.initializer}
    constants = {n.output[0]: n for n in g.node if n.op_type == "Constant" and id(n) not in region_ids}
    graph_outputs = {o.name for o in g.output}
    f32 = TensorProto.FLOAT

    new_inits: dict[str, TensorProto] = {}
    casts_in: dict[str, onnx.NodeProto] = {}

    def fp16_source(name: str) -> str:
        key = name + FP16_SUFFIX
        if name in initializers or name in constants:
            if key not in new_inits:
                src = initializers.get(name)
                arr = numpy_helper.to_array(src if src is not None else constants[name].attribute[0].t)
                new_inits[key] = numpy_helper.from_array(arr.astype(np.float16), key)
            return key
        if name in {i.name for i in g.input} or name not in produced:
            if key not in casts_in:
                casts_in[key] = helper.make_node("Cast", [name], [key], to=TensorProto.FLOAT16,
                                                 name=f"{scope or '/'}fp16_in/{name.strip('/')}")
            return key
        return name

    for n in region:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == f32:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
            continue
        if n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i == f32:
                    a.i = TensorProto.FLOAT16
        for k, name in enumerate(n.input):
            if name and types.get(name) == f32 and name not in produced:
                n.input[k] = fp16_source(name)

    # Float tensors leaving the region: the region writes NAME__fp16, a Cast restores NAME.
    outside_uses = {i for n in g.node if id(n) not in region_ids for i in n.input} | graph_outputs
    casts_out = []
    renamed: dict[str, str] = {}
    for n in region:
        for k, name in enumerate(n.output):
            if name in outside_uses and types.get(name) == f32:
                renamed[name] = name + FP16_SUFFIX
                n.output[k] = renamed[name]
                casts_out.append(helper.make_node("Cast", [renamed[name]], [name], to=f32,
                                                  name=f"{scope or '/'}fp32_out/{name.strip('/')}"))
    for n in region:
        for k, name in enumerate(n.input):
            if name in renamed:
                n.input[k] = renamed[name]

    referenced = {i for n in g.node for i in n.input}
    keep_inits = [t for t in g.initializer if t.name in referenced]
    nodes = topological_sort([*g.node, *casts_in.values(), *casts_out],
                             [i.name for i in g.input] + [t.name for t in keep_inits] + list(new_inits))
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend([*keep_inits, *new_inits.values()])
    del g.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    onnx.checker.check_model(m, full_check=True)
    logger.debug("fp16: %d trunk nodes, %d casts in, %d casts out, %d fp16 constants",
                 len(region), len(casts_in), len(casts_out), len(new_inits))
    return m


def precision_of(model: onnx.ModelProto) -> str:
    """``fp32``, ``fp16`` or ``int8`` from the graph's contents (not from its metadata)."""
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"
