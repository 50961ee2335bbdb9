"""``triton://HOST:PORT/NAME``: a model served by Triton Inference Server, as a :class:`Backend`.

    Detector("triton://127.0.0.1:8000/stpm")              # HTTP (default port 8000)
    Detector("triton+grpc://127.0.0.1:8001/stpm")         # gRPC (default port 8001)
    Detector("triton://gpu-box:8000/stpm?timeout=10&retries=8&version=1")

The model's stpm-edge metadata (input spec, threshold, precision) comes from its config's
``parameters["stpm_edge"]`` (``stpm-export --triton`` writes it; so does the PyTriton server of
:mod:`stpm_edge.triton.serve`), so nothing else is needed on the client. Batches larger than the
model's ``max_batch_size`` are split; a fixed-batch model (``max_batch_size: 0``) is padded and
chunked like a local one.

Connection errors (refused, reset, timeout, server restarting, model not loaded yet) are
retried with exponential backoff (0.25 s doubling to 4 s) up to ``retries`` times per call,
on a fresh connection each time; then a one-line StpmError. Other server errors fail at once.
The HTTP client (gevent based) is not thread-safe: this backend keeps one per thread.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from stpm_edge.artifact import ANOMALY_MAP, METADATA_KEY, SCORE, ModelMetadata
from stpm_edge.errors import StpmError, first_line
from stpm_edge.runtime.backends.base import Backend

logger = logging.getLogger(__name__)

SCHEMES = {"triton": "http", "triton+http": "http", "triton+grpc": "grpc"}
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
BACKOFF = (0.25, 4.0)


def is_triton_uri(path: Any) -> bool:
    return isinstance(path, str) and path.split("://", 1)[0].lower() in SCHEMES and "://" in path


@dataclass(frozen=True)
class TritonTarget:
    """A parsed ``triton://`` URI."""

    protocol: str
    host: str
    port: int
    model: str
    version: str = ""
    timeout: float = 30.0  # seconds per request
    retries: int = 5

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}://{self.url}/{self.model}"


def parse_triton_uri(uri: str) -> TritonTarget:
    """``triton[+grpc|+http]://HOST[:PORT]/NAME[?version=V&timeout=S&retries=N]`` (one-line StpmError)."""
    parts = urlsplit(uri)
    protocol = SCHEMES.get(parts.scheme.lower())
    if protocol is None:
        raise StpmError(f"{uri}: not a Triton URI (triton://HOST:PORT/NAME or triton+grpc://HOST:PORT/NAME)")
    model = parts.path.strip("/")
    if not parts.hostname or not model or "/" in model:
        raise StpmError(f"{uri}: expected triton://HOST:PORT/NAME (one model name after the address)")
    try:
        port = parts.port or DEFAULT_PORTS[protocol]
        q = {k: v[-1] for k, v in parse_qs(parts.query, strict_parsing=bool(parts.query)).items()}
        unknown = set(q) - {"version", "timeout", "retries"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} (version, timeout, retries)")
        timeout, retries = float(q.get("timeout", 30.0)), int(q.get("retries", 5))
        if not (0 < timeout <= 3600) or not (0 <= retries <= 100):
            raise ValueError("timeout must be in (0, 3600] s and retries in 0..100")
    except ValueError as e:
        raise StpmError(f"{uri}: {e}") from None
    return TritonTarget(protocol, parts.hostname, port, model, q.get("version", ""), timeout, retries)


def _is_connection_error(e: BaseException) -> bool:
    """Worth a reconnect: the server is down, restarting, or has not loaded the model yet."""
    if isinstance(e, (OSError, TimeoutError)):  # refused, reset, broken pipe, socket timeout
        return True
    if type(e).__module__.split(".")[0] in ("geventhttpclient", "gevent"):
        return True
    try:
        from tritonclient.utils import InferenceServerException  # noqa: PLC0415
    except ImportError:
        return False
    if isinstance(e, InferenceServerException):
        status, text = str(e.status() or ""), str(e.message() or "").lower()
        return (status in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "503", "502", "504")
                or "unknown model" in text or "not ready" in text or "not found" in text
                or "connection" in text or "socket closed" in text)
    return False


def metadata_from_config(config: dict[str, Any], where: str) -> tuple[ModelMetadata, int]:
    """The stpm-edge metadata and ``max_batch_size`` from a Triton model config (JSON form)."""
    params = config.get("parameters") or {}
    raw = (params.get(METADATA_KEY) or {}).get("string_value")
    if not raw:
        raise StpmError(f"{where}: the Triton model config has no {METADATA_KEY!r} parameter (write the repository "
                        f"with stpm-export --triton, or serve it with stpm_edge/triton/serve.py)")
    try:
        meta = ModelMetadata.from_dict(json.loads(raw), where)
    except ValueError as e:
        raise StpmError(f"{where}: {METADATA_KEY!r} parameter is not JSON ({first_line(e)})") from None
    mbs = int(config.get("max_batch_size", 0) or 0)
    if meta.input.batch is None and mbs < 1:
        raise StpmError(f"{where}: a dynamic-batch model needs max_batch_size >= 1 in its Triton config")
    return meta, mbs


class TritonBackend(Backend):
    """A model on a Triton server (see the module docstring)."""

    name = "triton"

    def __init__(self, uri: str) -> None:
        self.target = parse_triton_uri(uri)
        try:
            if self.target.protocol == "grpc":
                import tritonclient.grpc as module  # noqa: PLC0415
            else:
                import tritonclient.http as module  # noqa: PLC0415
        except ImportError as e:
            raise StpmError(f"{uri}: the triton backend needs tritonclient (pip install 'stpm-edge[triton]'): "
                            f"{first_line(e)}") from None
        self._mod = module
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self.reconnects = 0
        config = self._call(self._get_config, "reading the model config")
        self.metadata, self.max_batch_size = metadata_from_config(config, str(self.target))
        self.input_spec = self.metadata.input
        self._backend_kind = config.get("backend") or config.get("platform") or "?"
        logger.info("%s: Triton model (%s, max_batch_size %d), input %s", self.target, self._backend_kind,
                    self.max_batch_size, self.input_spec.expected(any_batch=True))

    # -- connection ----------------------------------------------------------------------
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            t = self.target
            if t.protocol == "grpc":
                client = self._mod.InferenceServerClient(t.url)
            else:
                client = self._mod.InferenceServerClient(t.url, connection_timeout=min(t.timeout, 10.0),
                                                         network_timeout=t.timeout)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass

    def _call(self, fn: Any, what: str, *args: Any) -> Any:
        """``fn(client, *args)`` with bounded reconnects on connection errors."""
        delay, attempt = BACKOFF[0], 0
        while True:
            if self._closed:
                raise StpmError(f"{self.target}: backend is closed")
            try:
                return fn(self._client(), *args)
            except Exception as e:  # noqa: BLE001 - classified below
                if not _is_connection_error(e):
                    raise StpmError(f"{self.target}: {what} failed ({first_line(e)})") from None
                self._drop_client()
                if attempt >= self.target.retries:
                    raise StpmError(f"{self.target}: {what} failed after {attempt + 1} attempts: "
                                    f"{first_line(e)}") from None
                attempt += 1
                self.reconnects += 1
                logger.warning("%s: %s (%s); reconnecting in %.2f s (%d/%d)", self.target, what, first_line(e),
                               delay, attempt, self.target.retries)
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])

    def _get_config(self, client: Any) -> dict[str, Any]:
        t = self.target
        if t.protocol == "grpc":
            return client.get_model_config(t.model, t.version, as_json=True).get("config", {})
        return client.get_model_config(t.model, t.version)

    def _run(self, client: Any, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, t = self._mod, self.target
        inp = m.InferInput(self.input_spec.name, list(frames.shape), "UINT8" if frames.dtype == np.uint8 else "FP32")
        inp.set_data_from_numpy(frames)
        outs = [m.InferRequestedOutput(ANOMALY_MAP), m.InferRequestedOutput(SCORE)]
        kwargs = {"client_timeout": t.timeout} if t.protocol == "grpc" else {}
        res = client.infer(t.model, [inp], model_version=t.version, outputs=outs, **kwargs)
        return res.as_numpy(ANOMALY_MAP), res.as_numpy(SCORE)

    # -- Backend ---------------------------------------------------------------------------
    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.input_spec.check(frames, any_batch=True)
        run = lambda x: self._call(self._run, "inference", x)  # noqa: E731
        if self.input_spec.batch is not None:
            return self._infer_chunked(frames, run)
        n, step = int(frames.shape[0]), self.max_batch_size
        if n <= step:
            return self._check_outputs(*run(np.ascontiguousarray(frames)), n)
        parts = [self._check_outputs(*run(np.ascontiguousarray(frames[i:i + step])), min(step, n - i))
                 for i in range(0, n, step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def describe(self) -> str:
        return f"triton {self.target} ({self._backend_kind})"

    def close(self) -> None:
        self._closed = True
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass


__all__ = ["TritonBackend", "TritonTarget", "is_triton_uri", "metadata_from_config", "parse_triton_uri"]
