"""ONNX operators that TensorRT 8.5's ONNX parser supports (the oldest TensorRT we target:
JetPack 5.1 ships TensorRT 8.5.2). The exported graph must use only these.

Source: onnx/onnx-tensorrt, docs/operators.md at commit
6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc, whose header reads "TensorRT 8.5 supports
operators up to Opset 17"; every row marked supported (Y). The 8.5.1 GA snapshot of the
same file (commit 0f305925c58b7358ea5caa308b41faed803382a5) additionally marks HardSwish,
Mod and OneHot unsupported (its parser code already imports them); they are excluded here
to take the strict reading. None of these operators was removed up to TensorRT 10.15.

Restrictions that matter for our graph (same file / builtin_op_importers.cpp):
- Resize: modes nearest and linear; coordinate transformation half_pixel, pytorch_half_pixel,
  asymmetric, align_corners (tf_half_pixel_for_nn with round_prefer_floor); no antialias.
- Pad: constant, reflect, edge; no ``axes`` input.
- QuantizeLinear/DequantizeLinear: zero point must be 0, given explicitly; per-axis for weights only.
- Slice/Squeeze/Unsqueeze/ReduceSum: axes must be initializers (constants).
- Not supported in 8.5: LayerNormalization, IsInf (added in 8.6).
"""
from __future__ import annotations

TRT85_MAX_OPSET = 17

TRT85_SUPPORTED_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu",
    "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "GRU", "Gather", "GatherElements", "GatherND",
    "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample",
    "HardSigmoid", "Identity", "If", "ImageScaler", "InstanceNormalization", "IsNaN", "LRN", "LSTM",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LpNormalization", "LpPool", "MatMul", "Max",
    "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not",
    "Or", "PRelu", "Pad", "ParametricSoftplus", "Pow", "QuantizeLinear", "RNN", "RandomNormal", "RandomNormalLike",
    "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu",
    "Reshape", "Resize", "ReverseSequence", "RoiAlign", "Round", "ScaledTanh", "Scan", "Scatter", "ScatterElements",
    "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus",
    "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile",
    "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
})


def unsupported_ops(op_types: set[str]) -> set[str]:
    """The operators of a graph that TensorRT 8.5 cannot parse."""
    return set(op_types) - TRT85_SUPPORTED_OPS
