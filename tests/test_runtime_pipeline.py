"""stpm-run end to end: a synthetic inspection video (defects on known frames) through the
pipeline headless; outputs, events, reconnect, backpressure, corrupt frames, SIGINT/SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from _cli import CliRunner

from stpm_edge.cli.app import app
from stpm_edge.data.io import list_images, read_image_bgr
from stpm_edge.errors import StpmError
from stpm_edge.models.deploy import ExportConfig
from stpm_edge.export.onnx_export import export_onnx
from stpm_edge.runtime import Detector
from stpm_edge.apps.run.outputs import (EventSink, Rendered, Sink, VideoSink, display_available, event_record,
                                       gui_available, output_kind)
from stpm_edge.apps.run.pipeline import Pipeline, PipelineConfig
from stpm_edge.apps.run.sources import LiveSource, ReconnectPolicy, open_source, parse_uri
from stpm_edge.apps.run.stats import LatencyStats, is_rss_mark

N_FRAMES = 22
DEFECT_FRAMES = (4, 11, 17)


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} is not a readable video"
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def _paint_defect(img: np.ndarray, k: int) -> np.ndarray:
    """A strong, unmistakable defect: a saturated block, placed differently each time."""
    out = img.copy()
    s = img.shape[0]
    x, y = (s // 6 + 11 * k) % (s // 2), (s // 4 + 7 * k) % (s // 2)
    cv2.rectangle(out, (x, y), (x + s // 3, y + s // 3), (255, 0, 255), -1)
    return out


@pytest.fixture(scope="module")
def model(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(small_model, tmp_path_factory.mktemp("run_model"), ExportConfig()).onnx_path


@pytest.fixture(scope="module")
def goods(brick_data: Path) -> list[np.ndarray]:
    return [read_image_bgr(p) for p in list_images(brick_data / "test" / "good")]


@pytest.fixture(scope="module")
def line_video(goods, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("line") / "line.mp4"
    h, w = goods[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    for i in range(N_FRAMES):
        img = goods[i % len(goods)]
        writer.write(_paint_defect(img, DEFECT_FRAMES.index(i)) if i in DEFECT_FRAMES else img)
    writer.release()
    assert count_frames(path) == N_FRAMES
    return path


@pytest.fixture(scope="module")
def threshold(model: Path, line_video: Path) -> float:
    """Between the good and the defective frames as decoded (the tiny test model is weak in
    absolute terms; the pipeline's job is to flag exactly what the Detector flags)."""
    cap = cv2.VideoCapture(str(line_video))
    with Detector(model) as det:
        scores = [det(cap.read()[1]).score for _ in range(N_FRAMES)]
    good = [s for i, s in enumerate(scores) if i not in DEFECT_FRAMES]
    bad = [scores[i] for i in DEFECT_FRAMES]
    assert min(bad) > max(good) + 0.02, (good, bad)
    return (min(bad) + max(good)) / 2


def _run_cli(args: list[str]) -> tuple[int, dict, str]:
    res = CliRunner().invoke(app, ["run", *args])
    summary = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    return res.exit_code, summary, res.stderr


def test_headless_run_flags_exactly_the_defect_frames(model, line_video, threshold, tmp_path):
    out, events, anomalies = tmp_path / "out.mp4", tmp_path / "events.jsonl", tmp_path / "ng"
    code, s, err = _run_cli([str(model), "--source", str(line_video), "--headless", "-o", str(out), "--events",
                             str(events), "--save-anomalies", str(anomalies), "--threshold", f"{threshold:.6f}",
                             "--side-by-side", "--json"])
    assert code == 0, err
    assert s["frames"] == N_FRAMES and s["ng_frames"] == len(DEFECT_FRAMES) and s["stop_reason"] == "end of stream"
    assert s["dropped"] == 0 and s["corrupt"] == 0 and s["error"] is None
    assert set(s["latency_ms"]) >= {"capture", "infer", "render", "output", "end_to_end"}
    assert s["latency_ms"]["end_to_end"]["count"] == N_FRAMES and s["latency_ms"]["infer"]["p99"] > 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["frame"] for e in lines] == list(DEFECT_FRAMES)
    for e in lines:
        assert e["score"] >= threshold and e["boxes"] and e["timestamp"].endswith("Z")
        assert e["source"] == str(line_video)
        assert {"x", "y", "w", "h", "score", "area"} <= set(e["boxes"][0])
    assert count_frames(out) == N_FRAMES
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 2 * 128  # side by side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "ng", "out.mp4"]  # no partial file
    saved = sorted(p.name for p in anomalies.iterdir())
    assert len(saved) == 3 * len(DEFECT_FRAMES) and "frame_000004_mask.png" in saved


def test_batch_and_image_folder_output_give_the_same_verdicts(model, line_video, threshold, tmp_path):
    ng: list[int] = []
    with Detector(model, threshold=threshold) as det, open_source(str(line_video)) as src:
        from stpm_edge.apps.run.outputs import ImageFolderSink

        sinks = [ImageFolderSink(tmp_path / "frames")]
        s = Pipeline(det, src, sinks, PipelineConfig(batch=3, hud=False),
                     on_frame=lambda r: ng.append(r.index) if r.result.is_anomalous else None).run()
    assert s.frames == N_FRAMES and ng == list(DEFECT_FRAMES)
    assert len(list((tmp_path / "frames").iterdir())) == N_FRAMES


def test_max_frames_and_loop(model, line_video, tmp_path):
    code, s, err = _run_cli([str(model), "-s", str(line_video), "--loop", "--max-frames", "50", "--headless",
                             "-o", str(tmp_path / "o.avi"), "--json"])
    assert code == 0, err
    assert s["frames"] == 50 and s["loops"] == 2 and s["stop_reason"] == "--max-frames 50"
    assert count_frames(tmp_path / "o.avi") == 50


def test_cli_errors_are_one_line(model, tmp_path):
    for args, message in ((["--camera", "7"], "camera 7 (/dev/video7): not found"),
                          (["-s", str(tmp_path / "none.mp4")], "no such video file"),
                          (["-s", "x.mp4", "--camera", "1"], "either --camera or --source"),
                          (["-s", "0", "--loop"], "--loop applies to files"),
                          (["-s", "x.mp4", "-o", str(tmp_path / "out.txt")], "use a video file"),
                          (["-s", "x.mp4", "--alpha", "2"], "alpha")):
        code, _, err = _run_cli([str(model), *args])
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 1 and lines == [lines[0]] and message in lines[0], (args, err)
    code, _, err = _run_cli([])
    assert code == 1 and "missing MODEL" in err


# ------------------------------------------------------------------------- live behaviour
class FrameFeed:
    """A fake camera over real frames; the first device fails after ``fail_after`` reads."""

    def __init__(self, frames: list[np.ndarray], fail_after: int | None, period: float = 0.005) -> None:
        self.frames, self.fail_after, self.period, self.n = frames, fail_after, period, 0

    def read(self):
        time.sleep(self.period)
        if self.fail_after is not None and self.n >= self.fail_after:
            return False, None
        self.n += 1
        return True, self.frames[self.n % len(self.frames)].copy()

    def release(self) -> None:
        pass


def test_live_source_reconnects_mid_stream(model, goods, tmp_path):
    opened: list[FrameFeed] = []

    def opener() -> FrameFeed:
        opened.append(FrameFeed(goods, fail_after=5 if not opened else None))
        return opened[-1]

    src = LiveSource(parse_uri("rtsp://fake/line"), opener, ReconnectPolicy(base_s=0.01, cap_s=0.05))
    out = tmp_path / "live.mp4"
    with Detector(model) as det:
        src.open()
        try:
            s = Pipeline(det, src, [VideoSink(out, 10)], PipelineConfig(max_frames=12)).run()
        finally:
            src.close()
    assert s.frames == 12 and s.reconnects == 1 and len(opened) == 2
    assert count_frames(out) == 12


def test_lost_source_raises_after_finalising_outputs(model, goods, tmp_path):
    calls: list[int] = []

    def opener() -> FrameFeed:
        calls.append(1)
        if len(calls) > 1:
            raise StpmError("rtsp://fake/line: could not connect")
        return FrameFeed(goods, fail_after=4)

    src = LiveSource(parse_uri("rtsp://fake/line"), opener, ReconnectPolicy(base_s=0.001, cap_s=0.001, attempts=2))
    out = tmp_path / "lost.mp4"
    with Detector(model) as det:
        src.open()
        pipeline = Pipeline(det, src, [VideoSink(out, 10)])
        with pytest.raises(StpmError, match="2 reconnect attempts failed"):
            pipeline.run()
        src.close()
    assert pipeline.summary.frames >= 1 and pipeline.summary.stop_reason == "source error"
    assert count_frames(out) == pipeline.summary.frames


class SlowSink(Sink):
    def __init__(self) -> None:
        self.indices: list[int] = []

    def write(self, item: Rendered) -> None:
        time.sleep(0.03)
        self.indices.append(item.index)


def test_live_backpressure_drops_oldest_and_latency_stays_bounded(model, goods):
    src = LiveSource(parse_uri("rtsp://fake/fast"), lambda: FrameFeed(goods, None, period=0.002))
    sink = SlowSink()
    with Detector(model) as det:
        src.open()
        try:
            s = Pipeline(det, src, [sink], PipelineConfig(max_frames=15)).run()
        finally:
            src.close()
    assert s.frames == 15 and s.dropped > 15
    assert sink.indices == sorted(sink.indices) and sink.indices[-1] > 30  # always the newest frames
    assert s.latency_ms["end_to_end"]["p99"] < 1000


def test_corrupt_images_are_skipped_and_counted(model, goods, tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), goods[i])
    (tmp_path / "2x.png").write_bytes(b"\x89PNG broken")
    events = tmp_path / "ev" / "events.jsonl"
    code, s, err = _run_cli([str(model), "-s", str(tmp_path), "--headless", "--events", str(events), "--json"])
    assert code == 0, err
    assert s["frames"] == 3 and s["corrupt"] == 1 and events.is_file()


@pytest.mark.parametrize("sig, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 0)], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_and_finalises_the_video(model, line_video, tmp_path, sig, exit_code):
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-c", "from stpm_edge.cli.app import run_main; run_main()", str(model), "-s",
           str(line_video), "--loop", "--headless", "-o", str(out), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not list(tmp_path.glob(".out.*.partial.mp4")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)  # a few frames into the video
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == exit_code, stderr
    s = json.loads(stdout)
    assert s["stop_reason"] == signal.Signals(sig).name and s["frames"] > 0
    assert count_frames(out) == s["frames"]
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


# --------------------------------------------------------------------------- pure helpers
def test_latency_reservoir_is_bounded_and_accurate():
    st = LatencyStats(capacity=256)
    values = np.random.default_rng(0).uniform(0.0, 0.1, 20_000)
    for v in values:
        st.add(float(v))
    s = st.summary()
    assert s["count"] == 20_000 and st._samples.size == 256
    assert abs(s["p50"] - 50.0) < 8 and s["p99"] > 90 and s["max"] == pytest.approx(1000 * values.max(), abs=1e-3)
    assert LatencyStats().summary()["p50"] is None
    assert [n for n in range(1, 100_001) if is_rss_mark(n)] == [100, 1000, 10_000, 100_000]


def test_display_and_output_decisions():
    assert not gui_available("  GUI:                           NONE\n")
    assert gui_available("  GUI:                           GTK3\n")
    assert display_available({"DISPLAY": ":0"}, "linux", gui=True)
    assert display_available({"WAYLAND_DISPLAY": "wayland-0"}, "linux", gui=True)
    assert not display_available({}, "linux", gui=True)
    assert not display_available({"DISPLAY": ":0"}, "linux", gui=False)
    assert display_available({}, "win32", gui=True)
    assert output_kind(Path("a.mp4")) == "video" and output_kind(Path("frames")) == "images"
    with pytest.raises(StpmError):
        output_kind(Path("a.gif"))


def test_event_record_and_sink(tmp_path):
    from stpm_edge.runtime.detector import make_result

    amap = np.zeros((1, 1, 4, 4), np.float32)
    amap[0, 0, 1, 1] = 0.9
    r = make_result((4, 4, 3), amap, 0.9, 0.5)
    item = Rendered(7, 1_700_000_000.25, np.zeros((4, 4, 3), np.uint8), r, None)
    rec = event_record(item, "csi://0")
    assert rec["timestamp"] == "2023-11-14T22:13:20.250Z" and rec["frame"] == 7 and rec["boxes"][0]["x"] == 1
    sink = EventSink(tmp_path / "e.jsonl", "csi://0")
    sink.write(item)
    assert json.loads((tmp_path / "e.jsonl").read_text()) == rec  # flushed before close
    sink.close()
    assert os.path.getsize(tmp_path / "e.jsonl") > 0
