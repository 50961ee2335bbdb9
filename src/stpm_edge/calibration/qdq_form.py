"""Checks and fixes of a written Q/DQ graph: TensorRT's accepted form, and activation inputs
that take their activation's quantization (split out of :mod:`.quantize`)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    return cons


def align_activation_inputs(model: onnx.ModelProto) -> int:
    """Give the input of every quantized Clip/Relu the quantization of its output, in place;
    returns how many were changed.

    A convolution followed by ReLU/ReLU6 is one fused layer for TensorRT and ONNX Runtime, so
    its output should be quantized on the activation's range ([0, 6] for ReLU6), not on the
    raw convolution's (20-67 on the sample model: 4-10x coarser steps). ONNX Runtime's
    quantizer does this itself from 1.20 on; up to 1.19 (the last for Python 3.8, so JetPack 5)
    it skips it for symmetric activations, which cost the TensorRT form 10 pt of image AUROC
    on the test model. Only an input with no other consumer is changed, as ONNX Runtime does.
    """
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = _consumers(model)
    changed = 0
    for node in model.graph.node:
        if node.op_type not in ("Clip", "Relu") or not node.input:
            continue
        dq_in = producer.get(node.input[0])
        q_in = producer.get(dq_in.input[0]) if dq_in is not None and dq_in.op_type == "DequantizeLinear" else None
        outs = consumers.get(node.output[0], [])
        if q_in is None or q_in.op_type != "QuantizeLinear" or len(outs) != 1 or outs[0].op_type != "QuantizeLinear":
            continue
        q_out = outs[0]
        raw = q_in.input[0]
        if len(consumers.get(raw, [])) != 1 or len(consumers.get(q_in.output[0], [])) != 1:
            continue  # the convolution's output (or its quantized form) is read elsewhere too
        params_in, params_out = list(q_in.input[1:3]), list(q_out.input[1:3])
        if list(dq_in.input[1:3]) != params_in or len(params_in) != len(params_out):
            continue
        pairs = list(zip(params_in, params_out))
        if not all(a in inits and b in inits and len(consumers.get(a, [])) == 2 for a, b in pairs):
            continue  # a parameter shared beyond this Q/DQ pair: leave it
        values = [(a, numpy_helper.to_array(inits[b])) for a, b in pairs]
        if any(not np.array_equal(numpy_helper.to_array(inits[a]), v) for a, v in values):
            for a, v in values:
                inits[a].CopyFrom(numpy_helper.from_array(v, a))
            changed += 1
    return changed


def check_tensorrt_form(model: onnx.ModelProto) -> list[str]:
    """Why TensorRT would reject this Q/DQ graph (empty list: it is in the accepted form).

    TensorRT's explicit quantization needs int8 Q/DQ with explicit zero-points that are all 0,
    per-tensor scales for activations (per-axis only for constant weights) and no
    DequantizeLinear of int32 biases.
    """
    inits = {t.name: t for t in model.graph.initializer}
    problems: list[str] = []
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if n.domain not in ("", "ai.onnx"):
            problems.append(f"{n.name}: {n.domain} domain (TensorRT parses only standard Q/DQ)")
        if len(n.input) < 3 or not n.input[2]:
            problems.append(f"{n.name}: no explicit zero-point")
            continue
        zp = inits.get(n.input[2])
        if zp is None:
            problems.append(f"{n.name}: zero-point is not a constant")
            continue
        if zp.data_type != TensorProto.INT8:
            kind = "int32 bias" if zp.data_type == TensorProto.INT32 else TensorProto.DataType.Name(zp.data_type)
            problems.append(f"{n.name}: {kind} quantization (TensorRT needs int8)")
        if np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{n.name}: non-zero zero-point (TensorRT needs symmetric quantization)")
        scale = inits.get(n.input[1])
        per_axis = scale is not None and numpy_helper.to_array(scale).size > 1
        weight = n.op_type == "DequantizeLinear" and n.input[0] in inits
        if per_axis and not weight:
            problems.append(f"{n.name}: per-axis scale on an activation (TensorRT needs per-tensor)")
    return problems
