"""Undo the stacked fusion in an exported ONNX graph: one trunk of doubled width → teacher
and student as two trunks of the original width.

The stacked trunk (:mod:`stpm_edge.models.stpm.fusion`) is the fastest FP32 form on ONNX
Runtime's CPU kernels, but its grouped pointwise convolutions (``group=2``) are a slow
path of ONNX Runtime's quantized convolution: on machine B of BENCHMARKS.md the stacked
efficientnet_lite0's widest 1×1 convolution took 1.55 ms as one ``QLinearConv`` and
0.65 ms as two. So the ``cpu`` INT8 form is quantized from this unstacked graph, which
computes the same features (checked by the tests) with ``group=1`` pointwise
convolutions. Every node of the trunk becomes a ``teacher`` and a ``student`` copy; the
slices that split each tapped level go away.

Only what the stacking produces is accepted: convolutions (the first one with a shared
input, every later one grouped by an even number), and per-channel element-wise or
pooling nodes whose other inputs are scalars. Anything else raises :class:`NotStacked`,
and the caller keeps the graph as it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

STACKED_MODULE = "trunk"  # StackedTrunks.trunk; ParallelTrunks has teacher/ and student/
HALVES = ("teacher", "student")
# Ops that act on each channel alone (so they apply to each half unchanged).
_PER_CHANNEL = {"Relu", "Clip", "Add", "Mul", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Identity",
                "MaxPool", "AveragePool"}


class NotStacked(ValueError):
    """The graph is not a stacked stpm-edge export this rewrite understands."""


@dataclass
class Unstacked:
    model: onnx.ModelProto
    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)  # stacked node → (teacher, student) nodes
    tensors: dict[str, tuple[str, str]] = field(default_factory=dict)  # stacked tensor → its halves


def is_stacked(model: onnx.ModelProto, scope: str) -> bool:
    """Whether ``model`` has a stacked trunk under ``scope`` (its low-precision region, e.g. ``/net/trunks/trunk/``)."""
    return scope.rstrip("/").endswith("/" + STACKED_MODULE) and any(n.name.startswith(scope) for n in model.graph.node)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and len(n.output) == 1:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _half_name(name: str, half: str) -> str:
    return f"{name}/{half}"


def unstack(model: onnx.ModelProto, scope: str) -> Unstacked:
    """The unstacked copy of ``model`` (which is left unchanged): the stacked trunk is the
    nodes under ``scope``. Raises :class:`NotStacked`."""
    if not is_stacked(model, scope):
        raise NotStacked("no stacked trunk in the graph (exported with --fusion parallel?)")
    consts = _constants(model)
    channels = _channels(model)
    inits = {i.name: i for i in model.graph.initializer}
    halves: dict[str, tuple[str, str]] = {}  # stacked tensor → halves
    rename: dict[str, str] = {}  # a removed slice's output → the half it selected
    node_map: dict[str, tuple[str, str]] = {}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    split_done: dict[str, tuple[str, str]] = {}  # a split initializer → its halves

    def split_init(name: str, what: str) -> tuple[str, str]:
        if name in split_done:  # one initializer can feed several nodes
            return split_done[name]
        arr = consts.get(name)
        if arr is None or name not in inits:
            raise NotStacked(f"{what}: {name!r} is not an initializer")
        if arr.shape[0] % 2:
            raise NotStacked(f"{what}: {name!r} has an odd first dimension {arr.shape}")
        c = arr.shape[0] // 2
        names = []
        for half, part in zip(HALVES, (arr[:c], arr[c:])):
            new = _half_name(name, half)
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(part), new))
            names.append(new)
        split_done[name] = (names[0], names[1])
        return split_done[name]

    for node in model.graph.node:
        if node.name.startswith(scope):
            node_halves = [helper.make_node(node.op_type, [], [], name=_half_name(node.name, h), domain=node.domain)
                           for h in HALVES]
            for nh in node_halves:
                nh.attribute.extend(node.attribute)
            if node.op_type == "Conv":
                data = node.input[0]
                group = next((a.i for a in node.attribute if a.name == "group"), 1)
                w = split_init(node.input[1], node.name)
                b = split_init(node.input[2], node.name) if len(node.input) > 2 and node.input[2] else None
                if data in halves:
                    if group % 2:
                        raise NotStacked(f"{node.name}: group {group} is not a stacked convolution")
                    ins = halves[data]
                    for nh in node_halves:
                        for a in nh.attribute:
                            if a.name == "group":
                                a.i = group // 2
                elif group == 1:  # the first convolution: both halves read the shared input
                    ins = (data, data)
                else:
                    raise NotStacked(f"{node.name}: grouped convolution on a shared input")
                for k, nh in enumerate(node_halves):
                    nh.input.extend([ins[k], w[k]] + ([b[k]] if b else []))
            elif node.op_type in _PER_CHANNEL:
                if not any(i in halves for i in node.input):
                    raise NotStacked(f"{node.name}: a trunk node that reads no trunk tensor")
                for i in node.input:
                    if i in halves or not i:
                        continue
                    arr = consts.get(i)
                    if arr is None or arr.size != 1:
                        raise NotStacked(f"{node.name}: input {i!r} is not a scalar constant")
                for k, nh in enumerate(node_halves):
                    nh.input.extend([halves[i][k] if i in halves else i for i in node.input])
            else:
                raise NotStacked(f"{node.name}: {node.op_type} is not a stacked-trunk op")
            for o in node.output:
                halves[o] = (_half_name(o, HALVES[0]), _half_name(o, HALVES[1]))
            for k, nh in enumerate(node_halves):
                nh.output.extend([halves[o][k] for o in node.output])
            node_map[node.name] = (node_halves[0].name, node_halves[1].name)
            new_nodes += node_halves
            continue
        if node.op_type == "Slice" and node.input and node.input[0] in halves:
            rename[node.output[0]] = halves[node.input[0]][_slice_half(node, consts, channels.get(node.input[0]))]
            continue
        if any(i in halves for i in node.input):
            raise NotStacked(f"{node.name}: reads the stacked trunk directly")
        kept = onnx.NodeProto()
        kept.CopyFrom(node)  # its inputs may be renamed below; ``model`` stays as it was
        new_nodes.append(kept)
    for node in new_nodes:
        for k, i in enumerate(node.input):
            if i in rename:
                node.input[k] = rename[i]
    if any(o.name in halves or o.name in rename for o in model.graph.output):
        raise NotStacked("a graph output is a stacked trunk tensor")

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    used = {i for n in new_nodes for i in n.input} | {o.name for o in model.graph.output}
    kept = [i for i in model.graph.initializer if i.name not in split_done and i.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept + new_inits)
    gone = set(halves) | set(rename)
    vi = [v for v in model.graph.value_info if v.name not in gone]
    del out.graph.value_info[:]
    out.graph.value_info.extend(vi)
    live = [n for n in out.graph.node if not (n.op_type == "Constant" and n.output[0] not in used)]
    del out.graph.node[:]
    out.graph.node.extend(live)
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as e:
        raise NotStacked(f"the unstacked graph does not check ({str(e).splitlines()[0]})") from e
    return Unstacked(out, node_map, halves)


def _channels(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor → its channel count (dim 1), where shape inference knows it."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError as e:
        raise NotStacked(f"shape inference failed ({str(e).splitlines()[0]})") from e
    out = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims) > 1 and dims[1].HasField("dim_value"):
            out[v.name] = dims[1].dim_value
    return out


def _slice_half(node: onnx.NodeProto, consts: dict[str, np.ndarray], channels: int | None) -> int:
    """0 (teacher) or 1 (student): which half of its input's ``channels`` a tap slice keeps."""
    def const(k: int):
        if len(node.input) <= k or not node.input[k]:
            return None
        if node.input[k] not in consts:
            raise NotStacked(f"{node.name}: input {node.input[k]!r} is not a constant")
        return consts[node.input[k]].astype(np.int64).ravel().tolist()

    starts, ends, axes, steps = const(1), const(2), const(3), const(4)
    if axes != [1] or steps not in (None, [1]) or len(starts) != 1:
        raise NotStacked(f"{node.name}: not a channel slice")
    if channels is None or channels % 2:
        raise NotStacked(f"{node.name}: the sliced tensor's channel count is unknown or odd ({channels})")
    half = channels // 2
    if starts[0] == 0 and ends[0] == half:
        return 0
    if starts[0] == half and ends[0] >= channels:
        return 1
    raise NotStacked(f"{node.name}: slices channels {starts[0]}:{ends[0]}, not a half")
