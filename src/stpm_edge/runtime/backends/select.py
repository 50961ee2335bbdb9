"""Which backend runs a model file, decided once (pure function) and opened in one place.

:func:`open_backend` is what the Detector, ``stpm-eval``, ``stpm-bench`` and the C ABI call.
:func:`choose_backend` is the decision, a pure function of what was found on the machine:

* ``auto`` on ``X.engine`` → TensorRT (the backend refuses an incompatible engine with one line);
* ``auto`` on ``X.onnx`` → the TensorRT engine of the same precision beside it
  (``model.onnx`` → ``model.fp32.engine``, ``model.fp16.onnx`` → ``model.fp16.engine``) when
  ``tensorrt`` imports, a CUDA GPU is there, the engine's sidecar says it was built by this
  TensorRT release for this GPU architecture and from this very ONNX file (sha256); otherwise
  ONNX Runtime with its ``auto`` providers (CUDA when the onnxruntime build has it, else CPU).
  Every step logs why. Engines of another precision are never picked silently (an INFO line
  names them);
* ``tensorrt`` → that engine or a one-line error saying why not;
* ``onnxruntime`` / ``cpu`` / ``cuda`` / ``ort-tensorrt`` → ONNX Runtime with those providers
  (``.onnx`` only; ``ort-tensorrt`` is ONNX Runtime's TensorRT execution provider);
* ``X.pt`` (a checkpoint) → PyTorch (``auto``, ``torch``, ``cpu`` or ``cuda``);
* ``triton://HOST:PORT/NAME`` (or ``triton+grpc://``), a URI rather than a file → the model on a
  Triton Inference Server (``auto`` or ``triton``).
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stpm_edge.artifact import file_sha256
from stpm_edge.errors import StpmError
from stpm_edge.runtime.backends.base import Backend
from stpm_edge.runtime.backends.triton import is_triton_uri
from stpm_edge.tensorrt.engine_meta import (ENGINE_SUFFIX, PRECISIONS, GpuInfo, check_compat, engine_path_for,
                                            is_cpu_form, no_engine_reason, read_sidecar, split_model_name)

logger = logging.getLogger(__name__)

# The one backend registry: every name a user can pass (--backend, stpm_options.backend, Detector).
BACKENDS = ("auto", "onnxruntime", "tensorrt", "cpu", "cuda", "ort-tensorrt", "torch", "triton")
ORT_PROVIDERS = {"auto": "auto", "onnxruntime": "auto", "cpu": "cpu", "cuda": "cuda", "ort-tensorrt": "ort-tensorrt"}
CHECKPOINT_SUFFIX = ".pt"
CHECKPOINT_BACKENDS = ("auto", "torch", "cpu", "cuda")


@dataclass(frozen=True)
class EngineCandidate:
    """An engine found beside an ONNX file: its sidecar (None if unreadable, with ``error``) and
    whether the sidecar's source sha256 matches the ONNX file now (None: not checked)."""

    path: Path
    sidecar: dict | None = None
    error: str = ""
    source_matches: bool | None = None


@dataclass(frozen=True)
class TrtEnv:
    """TensorRT on this machine: its version and GPU, or why it cannot run (``reason``)."""

    version: str | None = None
    gpu: GpuInfo | None = None
    reason: str = ""

    @property
    def usable(self) -> bool:
        return self.version is not None and self.gpu is not None


@dataclass(frozen=True)
class BackendChoice:
    kind: str  # "tensorrt" | "onnxruntime" | "torch"
    path: Path
    providers: str | None
    reason: str


def _engine_problem(candidate: EngineCandidate | None, env: TrtEnv | None, onnx_path: Path) -> str:
    """Why the engine cannot run here ('' when it can)."""
    if candidate is None:
        return no_engine_reason(onnx_path)
    if candidate.sidecar is None:
        return candidate.error or f"{candidate.path.name}: unreadable sidecar"
    if env is None or not env.usable:
        return (env.reason if env is not None else "") or "TensorRT or a CUDA GPU is missing"
    try:
        check_compat(candidate.sidecar, trt_version=env.version or "", gpu=env.gpu, engine_path=candidate.path.name)  # type: ignore[arg-type]
    except StpmError as e:
        return str(e)
    if candidate.source_matches is False:
        src = candidate.sidecar.get("engine", {}).get("source", {}).get("file", "its source")
        return (f"{candidate.path.name} is stale: {src} changed since the engine was built "
                f"(rebuild it with stpm-export)")
    return ""


def choose_backend(path: Path | str, requested: str = "auto", *, engine: EngineCandidate | None = None,
                   trt: TrtEnv | None = None) -> BackendChoice:
    """The backend for ``path`` (see the module docstring). One-line StpmError when impossible."""
    req = str(requested).strip().lower()
    if req not in BACKENDS:
        raise StpmError(f"backend: unknown {requested!r} (choose one of {', '.join(BACKENDS)})")
    if is_triton_uri(path):
        if req not in ("auto", "triton"):
            raise StpmError(f"{path}: a triton:// model runs on the triton backend only, not {requested!r}")
        return BackendChoice("triton", path, None, f"{req}: a model on a Triton server")  # type: ignore[arg-type]
    if req == "triton":
        raise StpmError(f"{path}: backend triton takes a URI, triton://HOST:PORT/NAME")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == CHECKPOINT_SUFFIX:
        if req not in CHECKPOINT_BACKENDS:
            raise StpmError(f"{path}: a .pt checkpoint runs with backend {', '.join(CHECKPOINT_BACKENDS)}, not "
                            f"{requested!r} (export it with stpm-export for ONNX Runtime or TensorRT)")
        return BackendChoice("torch", path, "cuda" if req == "cuda" else "cpu", f"{req}: {path.name} is a checkpoint")
    if req == "torch":
        raise StpmError(f"{path}: backend torch runs .pt checkpoints only")
    if suffix == ENGINE_SUFFIX:
        if req not in ("auto", "tensorrt"):
            raise StpmError(f"{path}: a TensorRT engine runs on the tensorrt backend only, not {requested!r} "
                            f"(pass the .onnx file for onnxruntime)")
        return BackendChoice("tensorrt", path, None, f"{req}: {path.name} is a TensorRT engine")
    if suffix != ".onnx":
        raise StpmError(f"{path}: unknown model type {path.suffix!r} (expected .onnx, .engine or .pt)")
    if req in ORT_PROVIDERS and req != "auto":
        return BackendChoice("onnxruntime", path, ORT_PROVIDERS[req], f"{req} requested")
    problem = _engine_problem(engine, trt, path)
    if req == "tensorrt":
        if problem:
            raise StpmError(f"{path}: cannot run on TensorRT: {problem}")
        return BackendChoice("tensorrt", engine.path, None, f"tensorrt requested: {engine.path.name}")  # type: ignore[union-attr]
    if not problem:
        return BackendChoice("tensorrt", engine.path, None,  # type: ignore[union-attr]
                             f"auto: {engine.path.name} fits TensorRT {trt.version} on {trt.gpu.name}")  # type: ignore[union-attr]
    return BackendChoice("onnxruntime", path, "auto", f"auto: {problem}; using ONNX Runtime")


# -- gathering what choose_backend needs (side effects) ----------------------------------

def find_engine(onnx_path: Path) -> EngineCandidate | None:
    """The same-precision engine beside ``onnx_path`` with its sidecar and freshness, or None."""
    onnx_path = Path(onnx_path)
    if is_cpu_form(onnx_path):
        return None  # ONNX Runtime's INT8 form has no engine
    engine = engine_path_for(onnx_path)
    if not engine.is_file():
        base, own = split_model_name(onnx_path)
        others = [engine_path_for(onnx_path, p).name for p in PRECISIONS
                  if p != own and engine_path_for(onnx_path, p).is_file()]
        if others:
            logger.info("%s: %s beside it are not %s; pass one of them to run it", onnx_path.name,
                        ", ".join(others), own.upper())
        return None
    try:
        sidecar = read_sidecar(engine)
    except StpmError as e:
        return EngineCandidate(engine, None, str(e))
    source = sidecar.get("engine", {}).get("source", {})
    matches = None
    src_file = engine.parent / str(source.get("file", ""))
    if source.get("sha256") and source.get("file") and src_file.is_file():
        matches = file_sha256(src_file) == source["sha256"]
    return EngineCandidate(engine, sidecar, "", matches)


def probe_tensorrt(device: int = 0) -> TrtEnv:
    """TensorRT's version and the GPU, importing ``tensorrt`` only when it is installed."""
    if importlib.util.find_spec("tensorrt") is None:
        return TrtEnv(reason="tensorrt is not installed")
    from stpm_edge.tensorrt.cuda import probe_gpu  # noqa: PLC0415
    from stpm_edge.tensorrt.api import import_tensorrt  # noqa: PLC0415

    try:
        trt = import_tensorrt()
    except StpmError as e:
        return TrtEnv(reason=str(e))
    gpu, why = probe_gpu(device)
    return TrtEnv(str(trt.__version__), gpu, why)


def open_backend(path: str | Path, backend: str = "auto", threads: int | None = None) -> Backend:
    """The one way to open a model file (``.onnx``, ``.engine`` or a ``.pt`` checkpoint) with the
    requested backend (one-line StpmError); or a ``triton://HOST:PORT/NAME`` URI."""
    if is_triton_uri(path):
        return _open(choose_backend(path, backend), threads)  # type: ignore[arg-type]
    path = Path(path)
    req = str(backend).strip().lower()
    engine: EngineCandidate | None = None
    env: TrtEnv | None = None
    if path.suffix.lower() == ".onnx" and req in ("auto", "tensorrt"):
        engine = find_engine(path)
        if engine is not None and engine.sidecar is not None:
            env = probe_tensorrt()
    choice = choose_backend(path, req, engine=engine, trt=env)
    # The ONNX Runtime backend logs its providers and why in its own line; say the choice once.
    logger.log(logging.DEBUG if choice.kind == "onnxruntime" and choice.reason.endswith(" requested") else logging.INFO,
               "%s: %s backend (%s)", path.name, choice.kind, choice.reason)
    return _open(choice, threads)


def _open(choice: BackendChoice, threads: Any) -> Backend:
    if choice.kind == "triton":
        from stpm_edge.runtime.backends.triton import TritonBackend  # noqa: PLC0415

        return TritonBackend(str(choice.path))
    if choice.kind == "torch":
        from stpm_edge.runtime.backends.torch import TorchBackend  # noqa: PLC0415

        return TorchBackend(choice.path, device=choice.providers or "cpu", threads=threads)
    if choice.kind == "tensorrt":
        from stpm_edge.tensorrt.runner import TensorRTBackend  # noqa: PLC0415

        return TensorRTBackend(choice.path)
    from stpm_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend  # noqa: PLC0415

    return OnnxRuntimeBackend(choice.path, providers=choice.providers or "auto", threads=threads)
