"""A real Triton Inference Server (PyTriton's bundled tritonserver 2.51, Python backend running
ONNX Runtime) serving an exported model, and the triton:// backend against it: concurrent client
streams equal to the local Detector, dynamic batching seen in Triton's statistics, a server
restart survived without lost results, stpm-run through triton://. Loopback only.

Needs the PyTriton env: ``scripts/triton_env.sh`` (creates .venv-triton from /usr/bin/python3.11);
skipped with the reason otherwise. Figures (client p50/p99, fps) are printed with ``-s``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from _trt_models import write_onnx

from stpm_edge.errors import StpmError
from stpm_edge.runtime import Detector
from stpm_edge.runtime.backends.triton import is_triton_uri, parse_triton_uri

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ENV = Path(os.environ.get("STPM_TRITON_ENV", ROOT / ".venv-triton"))
SERVE = ROOT / "src" / "stpm_edge" / "triton" / "serve.py"
H = W = 64
START_TIMEOUT = 180.0


def _env_problem() -> str:
    py = ENV / "bin" / "python"
    if not py.is_file():
        return f"no PyTriton env at {ENV} (create it with scripts/triton_env.sh)"
    r = subprocess.run([str(py), "-c", "import pytriton, onnxruntime"], capture_output=True, text=True, timeout=60)
    return "" if r.returncode == 0 else f"{ENV}: pytriton/onnxruntime do not import ({r.stderr.strip()[-200:]})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, log: Path) -> None:
        self.model, self.log = model, log
        self.http, self.grpc = _free_port(), _free_port()
        self.proc: subprocess.Popen | None = None
        self.token = ""

    def start(self, wait: bool = True) -> None:
        cmd = [str(ENV / "bin" / "python"), str(SERVE), str(self.model), "--name", "stpm", "--address", "127.0.0.1",
               "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--max-batch", "8", "--delay-us", "20000"]
        self.out = open(self.log, "a")
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            m = re.findall(r"READY \d+ \d+ (\S+)", self.log.read_text(errors="replace"))
            if m and self.proc.poll() is None:
                self.token = m[-1]
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        raise RuntimeError(f"tritonserver not ready in {START_TIMEOUT} s: {self.log.read_text()[-2000:]}")

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def stop(self) -> None:
        """SIGTERM the whole group (PyTriton, tritonserver, the Python-backend stub) and wait for all of it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while self._group_alive() and time.monotonic() < deadline:
            self.proc.poll()
            time.sleep(0.2)
        if self._group_alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.out.close()
        self.log = self.log.with_name(f"server.{time.monotonic_ns()}.log")  # the next start logs apart

    def stats(self) -> dict:
        import tritonclient.http as http

        c = http.InferenceServerClient(f"127.0.0.1:{self.http}")
        try:
            return c.get_inference_statistics("stpm", headers={"triton-access-token": self.token})["model_stats"][0]
        finally:
            c.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_onnx(tmp_path_factory.mktemp("triton_model") / "model.onnx", batch=None, h=H, w=W)


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory):
    problem = _env_problem()
    if problem:
        pytest.skip(problem)
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install -e '.[dev]')")
    srv = Server(model, tmp_path_factory.mktemp("triton_log") / "server.log")
    srv.start()
    yield srv
    srv.stop()


def frames(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def uri(srv: Server, grpc: bool = False, **q: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in q.items())
    base = f"triton+grpc://127.0.0.1:{srv.grpc}/stpm" if grpc else f"triton://127.0.0.1:{srv.http}/stpm"
    return base + (f"?{query}" if query else "")


def _stream(det: Detector, imgs: list[np.ndarray], out: list, lat: list) -> None:
    for img in imgs:
        t0 = time.perf_counter()
        _, x = det.prepare([img])
        out.append(det.infer(x))
        lat.append(time.perf_counter() - t0)


def _run_streams(make, n_streams: int, n_frames: int) -> tuple[list, list, float]:
    dets = [make() for _ in range(n_streams)]
    outs, lats = [[] for _ in dets], [[] for _ in dets]
    threads = [threading.Thread(target=_stream, args=(d, frames(n_frames, i), outs[i], lats[i]), daemon=True)
               for i, d in enumerate(dets)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    seconds = time.perf_counter() - t0
    for d in dets:
        d.close()
    assert all(not t.is_alive() for t in threads), "a client stream hung"
    return outs, [x for lat in lats for x in lat], seconds


def _figures(label: str, lat: list, frames_done: int, seconds: float) -> dict:
    ms = np.array(lat) * 1000
    fig = {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
           "fps": round(frames_done / seconds, 1)}
    print(f"\n{label}: {json.dumps(fig)}")
    return fig


def test_uri_parsing() -> None:
    assert is_triton_uri("triton://h:1/m") and not is_triton_uri("model.onnx") and not is_triton_uri(Path("x"))
    t = parse_triton_uri("triton+grpc://10.0.0.2/m?retries=2&timeout=3")
    assert (t.protocol, t.port, t.model, t.retries, t.timeout) == ("grpc", 8001, "m", 2, 3.0)
    for bad in ("triton://host", "triton://h:1/a/b", "triton://h:1/m?x=1", "triton://h:1/m?retries=-1"):
        with pytest.raises(StpmError):
            parse_triton_uri(bad)


def test_unreachable_server_is_one_line_error() -> None:
    pytest.importorskip("tritonclient.http")
    with pytest.raises(StpmError) as e:
        Detector(f"triton://127.0.0.1:{_free_port()}/stpm?retries=1&timeout=2")
    assert "\n" not in str(e.value) and "after 2 attempts" in str(e.value)


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
def test_concurrent_streams_match_local_and_batch(server: Server, model: Path, grpc: bool) -> None:
    local = Detector(model, backend="cpu")
    before = {b["batch_size"]: b["compute_infer"]["count"] for b in server.stats().get("batch_stats", [])}
    n_streams, n_frames = 4, 24
    outs, lat, seconds = _run_streams(lambda: Detector(uri(server, grpc)), n_streams, n_frames)
    for i, imgs in enumerate(frames(n_frames, s) for s in range(n_streams)):
        assert len(outs[i]) == n_frames
        for img, (amap, score) in zip(imgs, outs[i]):
            ref_map, ref_score = local.infer(local.prepare([img])[1])
            np.testing.assert_allclose(amap, ref_map, atol=1e-5)
            np.testing.assert_allclose(score, ref_score, atol=1e-5)
    batches = {b["batch_size"]: b["compute_infer"]["count"] - before.get(b["batch_size"], 0)
               for b in server.stats()["batch_stats"]}
    assert any(size > 1 and count > 0 for size, count in batches.items()), f"no dynamic batching: {batches}"
    assert sum(size * count for size, count in batches.items()) == n_streams * n_frames  # nothing lost or doubled
    print(f"\nTriton batch sizes ({'grpc' if grpc else 'http'}): {dict(sorted(batches.items()))}")
    local.close()


def test_latency_figures_1_vs_4_streams(server: Server, model: Path) -> None:
    """Client-observed p50/p99 and throughput, 1 and 4 streams, Triton vs the same model run locally."""
    for n in (1, 4):
        _, lat, s = _run_streams(lambda: Detector(uri(server)), n, 30)
        _figures(f"triton http, {n} stream(s)", lat, 30 * n, s)
        _, lat, s = _run_streams(lambda: Detector(model, backend="cpu", threads=1), n, 30)
        _figures(f"local onnxruntime cpu, {n} stream(s)", lat, 30 * n, s)


def test_metadata_and_describe(server: Server, model: Path) -> None:
    with Detector(uri(server)) as det, Detector(model, backend="cpu") as local:
        assert det.input_spec == local.input_spec and det.threshold == local.threshold
        assert det.describe().startswith(f"triton http://127.0.0.1:{server.http}/stpm")
        big = np.stack(frames(11, 7))  # more than max_batch_size 8: split into two requests
        np.testing.assert_allclose(det.infer(det.prepare(list(big))[1])[0], local.infer(local.prepare(list(big))[1])[0],
                                   atol=1e-5)
    with pytest.raises(StpmError) as e:
        Detector(f"triton://127.0.0.1:{server.http}/nope?retries=0")
    assert "\n" not in str(e.value)


def test_stpm_run_through_triton(server: Server, tmp_path: Path) -> None:
    from _cli import CliRunner

    from stpm_edge.cli.app import app

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(frames(6, 3)):
        cv2.imwrite(str(folder / f"{i:02d}.png"), img)
    events = tmp_path / "ng.jsonl"
    res = CliRunner().invoke(app, ["run", uri(server), "-s", str(folder), "--headless", "--json", "--threshold", "0.4",
                                   "--events", str(events)])
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["frames"] == 6 and summary["backend"].startswith("triton")
    assert len(events.read_text().splitlines()) == summary["ng_frames"]


def test_stpm_eval_through_triton_equals_local(server: Server, model: Path, brick_data: Path) -> None:
    from _cli import CliRunner

    from stpm_edge.cli.app import app

    got = {}
    for name, target in (("triton", uri(server)), ("local", str(model))):
        res = CliRunner().invoke(app, ["eval", target, str(brick_data), "--json"])
        assert res.exit_code == 0, res.stderr
        got[name] = json.loads(res.stdout)
    for key in ("image_auroc", "pixel_auroc", "pro"):
        assert got["triton"][key] == pytest.approx(got["local"][key], abs=1e-6), key


def test_stpm_bench_through_triton(server: Server, model: Path) -> None:
    """stpm-bench against the served model: batch × concurrent clients rows, every frame served once."""
    from _cli import CliRunner

    from stpm_edge.bench.schema import check_report
    from stpm_edge.cli.app import app

    def served() -> int:
        return sum(b["batch_size"] * b["compute_infer"]["count"] for b in server.stats().get("batch_stats", []))

    before = served()
    res = CliRunner().invoke(app, ["bench", uri(server), "--batch", "1,4", "--streams", "1,4", "--warmup", "1",
                                   "--iters", "5", "--json"])
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    assert check_report(rep) == [] and rep["skipped"] == [] and rep["peaks"] == []
    rows = {(r["batch"], r["streams"]): r for r in rep["results"]}
    assert set(rows) == {(1, 1), (4, 1), (1, 4), (4, 4)}
    assert all(r["backend"] == "triton" and r["device"] == "remote" and r["throughput_fps"] > 0 for r in rows.values())
    assert rows[(4, 4)]["label"] == "triton served × 4 streams" and rows[(4, 4)]["iters"] == 20
    with Detector(model, backend="cpu") as local:
        assert rep["model"]["input"] == local.input_spec.to_dict()
    assert served() - before == sum((1 + 5) * b * n for b, n in rows)  # warm-up and timed calls, nothing lost
    for (b, n), r in sorted(rows.items()):
        print(f"\nstpm-bench triton batch {b} × {n} streams: p50 {r['latency_ms']['p50']} ms, "
              f"p99 {r['latency_ms']['p99']} ms, {r['throughput_fps']} frames/s")


def test_server_restart_is_survived(server: Server, model: Path) -> None:
    local = Detector(model, backend="cpu")
    det = Detector(uri(server, retries=30, timeout=10))
    imgs = frames(40, 99)
    results: list = []
    errors: list = []

    def client() -> None:
        try:
            for img in imgs:
                results.append(det.infer(det.prepare([img])[1]))
                time.sleep(0.05)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    while len(results) < 5 and t.is_alive():
        time.sleep(0.05)
    server.stop()
    server.start(wait=False)
    t.join(timeout=240)
    server.wait_ready()
    assert not t.is_alive() and not errors, errors
    assert len(results) == len(imgs) and det.backend.reconnects > 0
    for img, (amap, score) in zip(imgs, results):
        np.testing.assert_allclose(score, local.infer(local.prepare([img])[1])[1], atol=1e-5)
    print(f"\nrestart survived: {det.backend.reconnects} reconnect attempts, {len(results)}/{len(imgs)} results")
    det.close()
    local.close()
