"""INT8 calibration: the frames that calibrate (``reader``) and ONNX Runtime Q/DQ quantization
(``quantize``).

TensorRT's calibrator classes and its calibration-cache text format live in
:mod:`stpm_edge.tensorrt` (``calibrator``, ``calibration_cache``); they are fed by
:class:`reader.CalibrationFrames`.
"""
