"""The classic INT8 calibrator (TensorRT 8.5-10): the second step of a build, after configure.

The calibrator protocol (``get_batch_size``/``get_batch(names)`` returning device pointers or
None, ``read_calibration_cache``/``write_calibration_cache``, explicit ``Base.__init__(self)``
in the trampoline subclass) as NVIDIA's ``samples/python/efficientnet/build_engine.py`` and
Polygraphy's ``backend/trt/calibrator.py`` use it. Calibration with dynamic shapes uses a
separate calibration profile whose opt shape is the calibration batch (TensorRT developer
guide, "INT8 Calibration with Dynamic Shapes"; NVIDIA/TensorRT issues #1116, #2561). The
cache goes through :mod:`stpm_edge.tensorrt.calibration_cache` (validated, atomic).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.errors import StpmError
from stpm_edge.artifact import InputSpec
from stpm_edge.tensorrt.calibration_cache import cache_header, read_cache, read_cache_bytes, write_cache_bytes
from stpm_edge.tensorrt.config import Configured, make_profile
from stpm_edge.tensorrt.engine_meta import GpuInfo
from stpm_edge.tensorrt.plan import BuildOptions, BuildPlan

logger = logging.getLogger(__name__)

CALIB_ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}


def make_calibrator(trt: Any, class_name: str, batches: Any, cache_path: Path | None, cuda: Any, *,
                    read_cache: bool = True) -> Any:
    """A ``trt.<class_name>`` (IInt8EntropyCalibrator2 / IInt8MinMaxCalibrator) fed by ``batches``.

    ``batches``: a :class:`stpm_edge.calibration.reader.CalibrationFrames` (or None to use the
    cache only). Each batch is copied into one device buffer whose pointer ``get_batch``
    returns. Errors inside callbacks (which TensorRT calls from C++) are kept in ``.error`` and
    re-raised by the builder after ``build_serialized_network`` returns.
    """
    base = getattr(trt, class_name)
    use_cache = read_cache

    class StpmCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # required for pybind trampolines
            self.error: BaseException | None = None
            self.batches_used = 0
            self.batch_size = int(getattr(batches, "batch_size", 1) or 1)
            self._it = iter(batches) if batches is not None else iter(())
            self._host: np.ndarray | None = None
            self._dev: int | None = None
            self._stream: Any = None

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names: Any) -> Any:
            try:
                batch = next(self._it, None)
                if batch is None:
                    return None
                with cuda.activate():
                    if self._dev is None:
                        self._host = cuda.pinned_empty(tuple(batch.shape), batch.dtype)
                        self._dev = cuda.malloc(self._host.nbytes)
                        self._stream = cuda.stream_create()
                    np.copyto(self._host, batch)
                    cuda.htod_async(self._dev, self._host, self._stream)
                    cuda.synchronize(self._stream)
                self.batches_used += 1
                return [int(self._dev)]
            except BaseException as e:  # noqa: BLE001 - reported after the build
                self.error = e
                return None

        def read_calibration_cache(self) -> Any:
            try:
                return read_cache_bytes(cache_path) if cache_path is not None and use_cache else None
            except BaseException as e:  # noqa: BLE001
                self.error = e
                return None

        def write_calibration_cache(self, cache: Any) -> None:
            try:
                if cache_path is not None:
                    write_cache_bytes(cache_path, bytes(cache))
            except BaseException as e:  # noqa: BLE001
                self.error = e

        def release(self) -> None:
            if cuda is None:
                return
            with cuda.activate():
                if self._dev is not None:
                    cuda.free(self._dev)
                if self._host is not None:
                    cuda.pinned_free(self._host)
                if self._stream is not None:
                    cuda.stream_destroy(self._stream)
            self._dev = self._host = self._stream = None

    return StpmCalibrator()


def check_cache(cache_path: Path, trt_version: str, method: str, have_images: bool) -> bool:
    """Validate an existing calibration cache before the build; True when TensorRT should read it.

    TensorRT ignores a cache written by another release or calibrator and calibrates again,
    which needs images: without ``--calib`` images that is a clear error here instead.
    """
    if not Path(cache_path).is_file():
        if not have_images:
            raise StpmError(f"{cache_path}: no calibration cache; pass --calib DIR with good images")
        return False
    header = read_cache(cache_path).header  # one-line StpmError when malformed
    want = cache_header(trt_version, CALIB_ALGORITHMS[method])
    if header == want:
        logger.info("%s: using the calibration cache (%s)", cache_path, header)
        return True
    if have_images:
        logger.info("%s: cache header %s is not %s; calibrating again", cache_path, header, want)
        return False
    raise StpmError(f"{cache_path}: calibration cache header {header!r} is not {want!r} (another TensorRT "
                   f"release or calibrator); pass --calib DIR with good images to calibrate again")


def attach_calibrator(trt: Any, built: Configured, log: Any, plan: BuildPlan, options: BuildOptions,
                      spec: InputSpec, metadata: dict, gpu: GpuInfo, version: str) -> Any:
    """Set ``config.int8_calibrator`` (and the calibration profile) when the plan calibrates; None otherwise."""
    if plan.int8_method != "calibrator":
        return None
    from stpm_edge.calibration.reader import CalibrationFrames  # noqa: PLC0415
    from stpm_edge.tensorrt.cuda import load_cuda  # noqa: PLC0415

    assert plan.calib_cache is not None and plan.calibrator_class is not None  # plan_build sets both
    reuse = check_cache(plan.calib_cache, version, options.calib_method, options.calib_dir is not None)
    batch = spec.batch or options.calib_batch
    from stpm_edge.artifact import ModelMetadata  # noqa: PLC0415

    frames = (CalibrationFrames(Path(options.calib_dir), spec, ModelMetadata.from_dict(metadata),
                                count=options.calib_count,
                                seed=options.calib_seed, batch_size=batch)
              if options.calib_dir is not None else None)
    cuda = load_cuda(gpu.index)
    calibrator = make_calibrator(trt, plan.calibrator_class, frames, plan.calib_cache, cuda, read_cache=reuse)
    built.config.int8_calibrator = calibrator
    if plan.calib_profile is not None:
        mark = log.mark()
        # "returns: True if the calibration profile was set correctly" (IBuilderConfig, 8.6-10.x)
        if not built.config.set_calibration_profile(make_profile(built.builder, spec.name, plan.calib_profile)):
            calibrator.release()
            raise StpmError(f"TensorRT {version} rejected the calibration profile {plan.calib_profile.to_dict()} "
                            f"({log.last_error(mark)})")
    return calibrator
