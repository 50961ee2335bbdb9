"""GFLOP per frame, counted from an ONNX graph with ONNX shape inference.

Counted (one multiply-add = 2 FLOP; INT8 ops count the same way, as integer operations):

* ``Conv``, ``ConvInteger``, ``QLinearConv``: ``2 · |Y| · (C_in / group) · ∏kernel`` — grouped
  and depthwise convolutions included (the weight's second dimension is already ``C_in/group``);
* ``ConvTranspose``: ``2 · |X| · (C_out / group) · ∏kernel``;
* ``MatMul``, ``MatMulInteger``, ``QLinearMatMul``: ``2 · |Y| · K`` (batched matmuls included);
* ``Gemm``: ``2 · M · N · K``.

Not counted: biases, element-wise ops (activations, the STPM head's normalisation and squared
differences, Q/DQ), pooling, ``Resize``, reductions, casts and shape arithmetic. They are listed
by type in :attr:`FlopCount.uncounted`, and :attr:`FlopCount.other_melem` gives the elements they
write per frame (millions; at ~1 op per element it bounds their share). Nodes inside
control-flow subgraphs (``If``/``Loop``/``Scan``) are not visited.

"Per frame": a symbolic batch dimension is fixed to 1 before shape inference; a fixed batch
``B`` divides the count by ``B``.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from stpm_edge.errors import StpmError, first_line

logger = logging.getLogger(__name__)

COUNTED = ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "MatMul", "MatMulInteger", "QLinearMatMul", "Gemm")
# Input index of the weight (convolutions) or of A and B (matmuls) per op type.
_CONV_W = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_MATMUL_AB = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}
NOT_COUNTED_NOTE = ("not counted: biases, element-wise ops (activations, STPM head, Q/DQ), pooling, Resize, "
                    "reductions, casts, shape ops")


@dataclass
class FlopCount:
    """FLOP of one frame through the graph (see the module docstring)."""

    gflop_per_frame: float
    by_op: dict[str, float] = field(default_factory=dict)  # op type → GFLOP per frame
    counted_nodes: int = 0
    unknown: list[str] = field(default_factory=list)  # counted op types whose shapes were not inferred
    uncounted: dict[str, int] = field(default_factory=dict)  # op type → node count
    other_melem: float = 0.0  # elements written per frame by the uncounted ops, millions
    batch: int = 1
    note: str = NOT_COUNTED_NOTE

    def to_dict(self) -> dict[str, Any]:
        return {"gflop_per_frame": round(self.gflop_per_frame, 6),
                "by_op": {k: round(v, 6) for k, v in self.by_op.items()},
                "counted_nodes": self.counted_nodes, "unknown_nodes": self.unknown,
                "uncounted_ops": self.uncounted, "other_melem_per_frame": round(self.other_melem, 4),
                "graph_batch": self.batch, "note": self.note}


def _dims(t: onnx.TypeProto) -> list[int | None] | None:
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]


def _shape_map(model: onnx.ModelProto) -> dict[str, list[int | None] | None]:
    g = model.graph
    shapes: dict[str, list[int | None] | None] = {}
    for vi in (*g.input, *g.value_info, *g.output):
        shapes[vi.name] = _dims(vi.type)
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _known(shape: list[int | None] | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def fix_batch(model: onnx.ModelProto) -> int:
    """Set a symbolic leading dimension of every graph input to 1 (in place); returns the graph batch."""
    batch = 1
    initializers = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in initializers or not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) == 0:
            continue
        if dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            batch = int(dims[0].dim_value)
        else:
            dims[0].Clear()
            dims[0].dim_value = 1
    return batch


def node_flops(node: onnx.NodeProto, shapes: dict[str, list[int | None] | None]) -> float | None:
    """FLOP of one counted node (None when a needed shape is unknown)."""
    op = node.op_type
    get = lambda i: shapes.get(node.input[i]) if i < len(node.input) else None  # noqa: E731
    y = shapes.get(node.output[0]) if node.output else None
    if op in _CONV_W:
        w = get(_CONV_W[op])
        if not (_known(w) and _known(y)):
            return None
        return 2.0 * math.prod(y) * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = get(0), get(1)
        if not (_known(x) and _known(w)):
            return None
        return 2.0 * math.prod(x) * math.prod(w[1:])
    if op in _MATMUL_AB:
        a = get(_MATMUL_AB[op][0])
        if not (_known(a) and _known(y)):
            return None
        return 2.0 * math.prod(y) * a[-1]
    if op == "Gemm":
        a = get(0)
        if not (_known(a) and _known(y)) or len(a) != 2:
            return None
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return 2.0 * math.prod(y) * k
    raise ValueError(f"{op} is not a counted op type")


def count_model(model: onnx.ModelProto) -> FlopCount:
    """Count on a loaded model (it is copied; the argument is not changed)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    batch = fix_batch(m)
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several types
        raise StpmError(f"FLOP count: ONNX shape inference failed ({first_line(e)})") from None
    shapes = _shape_map(m)
    total = 0.0
    by_op: Counter[str] = Counter()
    uncounted: Counter[str] = Counter()
    unknown: list[str] = []
    counted = 0
    other = 0.0
    for node in m.graph.node:
        if node.op_type in COUNTED:
            f = node_flops(node, shapes)
            if f is None:
                unknown.append(node.name or node.op_type)
                continue
            total += f
            by_op[node.op_type] += f
            counted += 1
        else:
            uncounted[node.op_type] += 1
            for out in node.output:
                s = shapes.get(out)
                if _known(s):
                    other += math.prod(s)
    if unknown:
        logger.warning("FLOP count: %d nodes with shapes that could not be inferred are not counted", len(unknown))
    return FlopCount(gflop_per_frame=total / batch / 1e9, by_op={k: v / batch / 1e9 for k, v in by_op.items()},
                     counted_nodes=counted, unknown=unknown, uncounted=dict(sorted(uncounted.items())),
                     other_melem=other / batch / 1e6, batch=batch)


def count_flops(path: Path) -> FlopCount:
    """Count the FLOP per frame of the ONNX file at ``path`` (one-line StpmError on a bad file)."""
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001
        raise StpmError(f"{path}: not a readable ONNX file ({first_line(e)})") from None
    return count_model(model)
