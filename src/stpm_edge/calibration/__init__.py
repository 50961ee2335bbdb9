"""INT8 calibration: the frames that calibrate (``reader``), ONNX Runtime Q/DQ quantization
(``quantize``) and TensorRT's calibration-cache text format (``cache``).

The TensorRT calibrator classes themselves live in :mod:`stpm_edge.tensorrt.builder`, the one
module that imports ``tensorrt``; they are fed by :class:`reader.CalibrationFrames` and read
and write their cache with :mod:`cache`.
"""
