"""stpm-run against a real RTSP server on 127.0.0.1 that is killed and restarted mid-stream.

The server (tests/_rtsp.py) is FFmpeg sending RTP for a looping inspection video (defects on
known frames) plus a small RTSP front end; stpm-run runs as its own process, as in production.
Halfway through, the server goes away for ~2 s (connections closed, FFmpeg killed) and comes
back on the same port. stpm-run must reconnect with its backoff, count what it missed, lose or
duplicate no NG event, and finalise the output video.
"""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="needs imageio-ffmpeg (its static ffmpeg binary "
                                     "feeds the RTSP server); pip install imageio-ffmpeg")
try:
    imageio_ffmpeg.get_ffmpeg_exe()
except RuntimeError as e:  # a platform without a bundled binary and no IMAGEIO_FFMPEG_EXE
    pytest.skip(f"imageio-ffmpeg has no ffmpeg binary here: {e}", allow_module_level=True)
if not cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
    pytest.skip("this OpenCV has no FFmpeg backend: it cannot open rtsp:// URLs", allow_module_level=True)

from _rtsp import RtspServer, encode_mpeg4  # noqa: E402
from test_runtime_pipeline import _paint_defect, count_frames  # noqa: E402

from stpm_edge.apps.run.sources import ReconnectPolicy  # noqa: E402
from stpm_edge.data.io import list_images, read_image_bgr  # noqa: E402
from stpm_edge.export.onnx_export import export_onnx  # noqa: E402
from stpm_edge.models.deploy import ExportConfig  # noqa: E402
from stpm_edge.runtime import Detector  # noqa: E402

FPS = 25
LOOP = 25  # frames in the video: one second, looped by the server
DEFECT_FRAMES = (3, 9, 15, 21)
BEFORE = 50  # frames the server sends before it is killed (~2 s)
DOWN_S = 2.0  # how long it stays down
MAX_FRAMES = 100
CONNECT_SLACK_S = 2.0  # an RTSP open (DESCRIBE/SETUP/PLAY, stream probe) and the failed attempts' own time


@pytest.fixture(scope="module")
def model(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(small_model, tmp_path_factory.mktemp("rtsp_model"), ExportConfig()).onnx_path


@pytest.fixture(scope="module")
def stream_video(brick_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The camera's view: good bricks, a painted defect on DEFECT_FRAMES, MPEG-4 with a keyframe
    every 5 frames (what the server streams as is)."""
    goods = [read_image_bgr(p) for p in list_images(brick_data / "test" / "good")]
    root = tmp_path_factory.mktemp("rtsp_video")
    h, w = goods[0].shape[:2]
    writer = cv2.VideoWriter(str(root / "raw.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (w, h))
    for i in range(LOOP):
        img = goods[i % len(goods)]
        writer.write(_paint_defect(img, DEFECT_FRAMES.index(i)) if i in DEFECT_FRAMES else img)
    writer.release()
    out = encode_mpeg4(root / "raw.mp4", root / "line.mp4", gop=5)
    assert count_frames(out) == LOOP
    return out


@pytest.fixture(scope="module")
def threshold(model: Path, stream_video: Path) -> float:
    """Between the good and the defective frames as the stream decodes them (the same bitstream)."""
    cap = cv2.VideoCapture(str(stream_video))
    with Detector(model) as det:
        scores = [det(cap.read()[1]).score for _ in range(LOOP)]
    cap.release()
    good = [s for i, s in enumerate(scores) if i not in DEFECT_FRAMES]
    bad = [scores[i] for i in DEFECT_FRAMES]
    assert min(bad) > max(good) + 0.02, (good, bad)
    return (min(bad) + max(good)) / 2


def _wall(ts: str) -> float:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _first_attempt_after(policy: ReconnectPolicy, down: float) -> float:
    """When (after the drop) the first reconnect attempt at or after ``down`` seconds is made."""
    t, attempt = 0.0, 0
    while True:
        t += policy.delay(attempt)
        if t >= down or not policy.allows(attempt + 1):
            return t
        attempt += 1


def test_stpm_run_survives_an_rtsp_server_restart(model, stream_video, threshold, tmp_path):
    out, events = tmp_path / "out.mp4", tmp_path / "ev.jsonl"
    with RtspServer(stream_video) as srv:
        cmd = [sys.executable, "-c", "from stpm_edge.cli.entry import run_main; run_main()", str(model),
               "-s", srv.url, "--headless", "-o", str(out), "--events", str(events),
               "--threshold", f"{threshold:.6f}", "--max-frames", str(MAX_FRAMES), "--json"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while srv.frames_sent < BEFORE and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None and srv.frames_sent >= BEFORE, proc.communicate(timeout=10)[1]
            t_stop = time.time()
            srv.stop()
            time.sleep(DOWN_S)
            srv.start()
            t_back = time.time()
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
        sent, sessions = srv.frames_sent, srv.sessions
    assert proc.returncode == 0, stderr
    s = json.loads(stdout)
    down = t_back - t_stop

    # reconnected once, by the backoff schedule: not while the server was down, and at the first
    # attempt after it came back (plus the time an RTSP open takes)
    policy = ReconnectPolicy()  # stpm-run's default (--reconnect, 10 attempts, 0.5 s .. 8 s)
    bound = _first_attempt_after(policy, down) + CONNECT_SLACK_S
    assert s["reconnects"] == 1 and sessions == 2, s
    assert s["reconnect_failures"] >= 1, s  # it retried while the server was down
    assert down - 0.5 <= s["max_outage_s"] == s["outage_s"] <= bound, (down, bound, s)
    assert s["frames"] == MAX_FRAMES and s["stop_reason"] == f"--max-frames {MAX_FRAMES}" and s["error"] is None
    # every frame processed or counted as dropped came from the server
    assert s["frames"] + s["dropped"] <= sent, (s["frames"], s["dropped"], sent)
    assert "reconnected" in stderr, stderr

    # NG events: one line per NG frame, none twice, none invented during the outage, and NG
    # detection carries on after the reconnect
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(lines) == s["ng_frames"] >= 2, (len(lines), s["ng_frames"])
    frames = [e["frame"] for e in lines]
    assert frames == sorted(set(frames)), frames
    stamps = [_wall(e["timestamp"]) for e in lines]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert not [t for t in stamps if t_stop + 0.5 < t < t_back], (t_stop, t_back, stamps)
    assert any(t < t_stop for t in stamps) and any(t > t_back for t in stamps), (t_stop, t_back, stamps)
    assert all(e["score"] >= threshold and e["source"] == srv.url for e in lines)

    # the video is finalised, with every processed frame, and no partial file is left
    assert count_frames(out) == s["frames"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.jsonl", "out.mp4"]
    print(f"\nRTSP restart: server down {down:.2f} s, outage {s['outage_s']:.2f} s (bound {bound:.2f} s), "
          f"{s['reconnect_failures']} failed attempts, {s['reconnects']} reconnect; frames sent {sent}, "
          f"processed {s['frames']}, dropped {s['dropped']}, ~{round(s['outage_s'] * FPS)} missed in the outage; "
          f"{len(lines)} NG events = {s['ng_frames']} NG frames")
