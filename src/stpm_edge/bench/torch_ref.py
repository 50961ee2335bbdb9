"""The PyTorch eager reference of a checkpoint, in the forms ``stpm-bench`` times.

It runs the very module the exporter traces (:class:`stpm_edge.models.deploy.ExportGraph`,
dynamic batch), as :class:`stpm_edge.runtime.backends.torch.TorchBackend` does, plus what a
benchmark needs on top: the memory format (contiguous or channels_last, chosen by timing),
FP16 autocast on CUDA, and CUDA graphs (one captured graph per batch size, replayed with the
frames copied into its static input through a pinned host buffer). Should capturing the
in-graph preprocessing fail (its BGR→RGB channel gather indexes with a Python list, which
PyTorch may copy from host memory during capture), the graph covers trunks + head and the
preprocessing runs eagerly before each replay; ``describe()`` says which.

Every call includes the host → device upload of the uint8 frames and the download of both
outputs, as the ONNX Runtime and TensorRT backends do, so the rows compare like with like.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stpm_edge.errors import StpmError, first_line
from stpm_edge.runtime.backends.base import Backend, InputSpec

logger = logging.getLogger(__name__)

MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


@dataclass
class _Captured:
    """One captured CUDA graph: pinned host input → device frames → (eager preprocessing →) static
    input of the graph → static outputs."""

    graph: Any
    host_in: torch.Tensor
    dev_frames: torch.Tensor
    static_in: torch.Tensor
    pre: Any  # the preprocessing module run eagerly before the graph, or None (it is inside)
    outputs: tuple[torch.Tensor, torch.Tensor]


class TorchEager(Backend):
    """``checkpoint`` on ``device`` in ``precision`` (fp32, or fp16 = autocast on CUDA)."""

    name = "torch"

    def __init__(self, checkpoint: Path, device: str = "cpu", precision: str = "fp32", *, cuda_graph: bool = False,
                 memory_format: str = "auto", threads: int | None = None) -> None:
        from dataclasses import replace  # noqa: PLC0415

        from stpm_edge.artifact import file_sha256  # noqa: PLC0415
        from stpm_edge.models.checkpoint import load_checkpoint  # noqa: PLC0415
        from stpm_edge.models.deploy import ExportConfig, ExportGraph, build_metadata  # noqa: PLC0415

        if device not in ("cpu", "cuda"):
            raise StpmError(f"torch device {device!r}: expected cpu or cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise StpmError("torch cuda: no CUDA GPU is available to PyTorch")
        if precision == "fp16" and device != "cuda":
            raise StpmError("torch fp16: autocast FP16 runs on CUDA only")
        if precision not in ("fp32", "fp16"):
            raise StpmError(f"torch precision {precision!r}: expected fp32 or fp16")
        if cuda_graph and device != "cuda":
            raise StpmError("CUDA graphs need a CUDA device")
        if memory_format not in MEMORY_FORMATS:
            raise StpmError(f"memory format {memory_format!r}: expected one of {', '.join(MEMORY_FORMATS)}")
        if threads is not None:
            torch.set_num_threads(threads)
        self.path = Path(checkpoint)
        self.device = torch.device(device)
        self.precision = precision
        self.cuda_graph = cuda_graph
        model, meta = load_checkpoint(self.path)
        cfg = ExportConfig(dynamic_batch=True).validated(meta)
        self._graph: torch.nn.Module | None = ExportGraph(model, meta, cfg).to(self.device).eval()
        self.metadata = replace(build_metadata(meta, cfg, self.path, file_sha256(self.path)), precision=precision)
        self.input_spec = self.metadata.input
        self.memory_format = "contiguous"
        self._requested_format = memory_format
        self._graphs: dict[int, _Captured] = {}
        self.graph_scope = ""
        if memory_format == "channels_last":
            self._set_format("channels_last")

    # -- set-up ---------------------------------------------------------------------------

    def _set_format(self, fmt: str) -> None:
        assert self._graph is not None
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        self._graph = self._graph.to(memory_format=mf)
        self.memory_format = fmt
        self._graphs.clear()  # captured graphs hold the old weights' layout

    def _autocast(self) -> Any:
        if self.precision == "fp16":
            return torch.autocast("cuda", dtype=torch.float16, cache_enabled=not self.cuda_graph)
        return contextlib.nullcontext()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _eager(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self._graph is not None
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        with torch.inference_mode(), self._autocast():
            amap, score = self._graph(x)
        return amap.float().cpu().numpy(), score.float().cpu().numpy()

    def choose_memory_format(self, frames: np.ndarray, reps: int = 3) -> str:
        """With ``memory_format="auto"``: time both formats on ``frames`` and keep the faster."""
        if self._requested_format != "auto":
            return self.memory_format
        times = {}
        for fmt in ("contiguous", "channels_last"):
            self._set_format(fmt)
            self._eager(frames)  # warm-up (oneDNN / cuDNN pick their kernels)
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                self._eager(frames)
                self._sync()
                best = min(best, time.perf_counter() - t0)
            times[fmt] = best
        fastest = min(times, key=times.get)  # type: ignore[arg-type]
        self._set_format(fastest)
        self._requested_format = fastest
        logger.info("torch %s on %s: %s (contiguous %.1f ms, channels_last %.1f ms)", self.precision, self.device,
                    fastest, 1000 * times["contiguous"], 1000 * times["channels_last"])
        return fastest

    def _capture(self, n: int) -> _Captured:
        """A CUDA graph of the whole module for batch ``n``; where capturing the in-graph
        preprocessing fails, a graph of trunks + head with the preprocessing run eagerly before it."""
        try:
            cap = self._capture_with(n, eager_pre=False)
            self.graph_scope = "whole model"
            return cap
        except RuntimeError as e:
            assert self._graph is not None
            if getattr(self._graph, "pre", None) is None:
                raise
            why = first_line(e, 120)
            torch.cuda.synchronize(self.device)
            logger.warning("torch: CUDA graph capture of the whole model failed (%s); capturing trunks + head "
                           "and running the preprocessing eagerly", why)
            cap = self._capture_with(n, eager_pre=True)
            self.graph_scope = f"trunks + head; preprocessing eager (whole-model capture failed: {why})"
            return cap

    def _capture_with(self, n: int, eager_pre: bool) -> _Captured:
        graph_module = self._graph
        assert graph_module is not None
        spec = self.input_spec
        dtype = torch.uint8 if spec.dtype == "uint8" else torch.float32
        host_in = torch.zeros(spec.shape(n), dtype=dtype).pin_memory()
        dev_frames = torch.zeros(spec.shape(n), dtype=dtype, device=self.device)
        pre = graph_module.pre if eager_pre else None
        with torch.no_grad():
            static_in = pre(dev_frames).clone() if pre is not None else dev_frames

        def body() -> tuple[torch.Tensor, torch.Tensor]:
            if pre is None:
                return graph_module(static_in)
            graph_module.pre = None  # ExportGraph.forward skips preprocessing when pre is None
            try:
                return graph_module(static_in)
            finally:
                graph_module.pre = pre

        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(stream):  # warm up on a side stream, as the docs require
            for _ in range(3):
                with self._autocast():
                    body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph), self._autocast():
            outputs = body()
        return _Captured(graph, host_in, dev_frames, static_in, pre, outputs)

    def _replay(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = int(frames.shape[0])
        if n not in self._graphs:
            self._graphs[n] = self._capture(n)
        c = self._graphs[n]
        c.host_in.numpy()[...] = frames
        c.dev_frames.copy_(c.host_in, non_blocking=True)
        if c.pre is not None:
            with torch.no_grad():
                c.static_in.copy_(c.pre(c.dev_frames))
        c.graph.replay()
        amap, score = c.outputs
        return amap.float().cpu().numpy(), score.float().cpu().numpy()

    # -- Backend ---------------------------------------------------------------------------

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._graph is None:
            raise StpmError(f"{self.path}: backend is closed")
        self.input_spec.check(frames, any_batch=True)
        try:
            amap, score = self._replay(frames) if self.cuda_graph else self._eager(frames)
        except RuntimeError as e:
            raise StpmError(f"{self.path}: torch inference failed ({first_line(e)})") from e
        return self._check_outputs(amap, score, int(frames.shape[0]))

    def close(self) -> None:
        self._graphs.clear()
        self._graph = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> str:
        mode = "autocast fp16" if self.precision == "fp16" else "fp32"
        graph = f", CUDA graph: {self.graph_scope or 'not captured yet'}" if self.cuda_graph else ""
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else \
            f"cpu, {torch.get_num_threads()} threads"
        return f"torch {torch.__version__} eager ({where}; {mode}, {self.memory_format}{graph})"
