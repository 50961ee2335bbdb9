"""Everything TensorRT in one package (as Polygraphy keeps ``backend/trt/``).

Nothing here imports ``tensorrt`` at package import; the modules that need it call
:func:`stpm_edge.tensorrt.api.import_tensorrt`.

* ``plan`` — every build decision as a pure function of what the installed TensorRT has;
* ``api`` — the one import of ``tensorrt``: feature checks (caps), the process-wide logger,
  starting a ``Builder`` / ``Runtime`` with one-line errors;
* ``config`` — configure: network, parser, builder config, profiles, DLA, timing cache;
* ``calibrator`` — attach the classic INT8 calibrator (8.5-10) and check its cache;
* ``calibration_cache`` — TensorRT's calibration-cache text format (plain Python);
* ``artifacts`` — write the engine, its sidecar and the timing cache;
* ``builder`` — ``build_engine`` = configure → attach calibrator → build → write artifacts;
* ``engine_meta`` — engine file names, versions, the sidecar and the compatibility rule;
* ``cuda`` — the CUDA calls the runner and calibrator need (cuda-python or PyCUDA);
* ``runner`` — :class:`TensorRTBackend`, a serialized engine behind the ``Backend`` interface;
* ``onnx_ops`` — the ONNX operators TensorRT 8.5's parser takes (the exporter's allow-list).
"""
