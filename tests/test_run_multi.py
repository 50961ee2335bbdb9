"""Multi-stream stpm-run: several real video files (made from the sample images) through one
model, frames batched across streams, per-stream outputs/events/stats; a stalled and a vanished
live stream do not hold the others back."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from _cli import CliRunner
from _trt_models import write_onnx

from stpm_edge.apps.run.multi import MultiPipeline, Stream
from stpm_edge.apps.run.outputs import Rendered, Sink, TiledWindowSink, tile_mosaic
from stpm_edge.apps.run.pipeline import PipelineConfig
from stpm_edge.apps.run.sources import Capture, Status, VideoSource, open_source, parse_uri
from stpm_edge.cli.app import app
from stpm_edge.cli.run import stream_output
from stpm_edge.data.io import list_images, read_image_bgr
from stpm_edge.errors import StpmError
from stpm_edge.runtime import Detector

LENGTHS = (9, 13, 6)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_onnx(tmp_path_factory.mktemp("multi_model") / "model.onnx", batch=None, h=64, w=64)


@pytest.fixture(scope="module")
def videos(brick_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    imgs = [read_image_bgr(p) for p in list_images(brick_data / "test" / "good")]
    imgs += [read_image_bgr(p) for d in sorted((brick_data / "test").iterdir()) if d.name != "good"
             for p in list_images(d)]
    folder = tmp_path_factory.mktemp("multi_videos")
    paths = []
    for k, n in enumerate(LENGTHS):
        path = folder / f"line{k}.avi"
        h, w = imgs[0].shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
        for i in range(n):
            writer.write(imgs[(3 * k + i) % len(imgs)])
        writer.release()
        paths.append(path)
    return paths


def decoded(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f)


class Collect(Sink):
    def __init__(self) -> None:
        self.items: list[tuple[str, int, float]] = []

    def write(self, item: Rendered) -> None:
        self.items.append((item.stream, item.index, item.result.score))


class FakeLive(VideoSource):
    """A live source: ``frames`` frames, then stalls (TIMEOUT forever) or vanishes (ERROR)."""

    live = True

    def __init__(self, frames: int, then: Status, image: np.ndarray) -> None:
        super().__init__(parse_uri("rtsp://127.0.0.1:9/fake"))
        self.left, self.then, self.image = frames, then, image

    def open(self) -> None:
        pass

    def capture(self, timeout: float = 1.0) -> Capture:
        if self.left > 0:
            self.left -= 1
            time.sleep(0.01)
            return self._ok(self.image.copy())
        if self.then is Status.ERROR:
            return Capture(Status.ERROR, message="rtsp://127.0.0.1:9/fake: lost for good")
        time.sleep(min(timeout, 0.2))
        return Capture(Status.TIMEOUT)


def test_file_streams_batched_and_equal_to_detector(model: Path, videos: list[Path]) -> None:
    det = Detector(model, backend="cpu")
    sink = Collect()
    streams = [Stream(f"s{i}", open_source(str(v))) for i, v in enumerate(videos)]
    summary = MultiPipeline(det, streams, [sink], PipelineConfig(batch=4)).run()
    for st in streams:
        st.source.close()
    assert {n: s["frames"] for n, s in summary["streams"].items()} == {f"s{i}": n for i, n in enumerate(LENGTHS)}
    assert summary["frames"] == sum(LENGTHS) and max(summary["batches"]) > 1
    assert sum(k * v for k, v in summary["batches"].items()) == sum(LENGTHS)
    for i, v in enumerate(videos):
        got = sorted((idx, s) for name, idx, s in sink.items if name == f"s{i}")
        want = [r.score for r in det.batch(decoded(v))]
        assert [idx for idx, _ in got] == list(range(len(want)))
        np.testing.assert_allclose([s for _, s in got], want, atol=1e-5)
    assert set(summary["streams"]["s0"]["latency_ms"]) >= {"capture", "preprocess", "infer", "render", "output"}
    det.close()


@pytest.mark.parametrize("then", [Status.TIMEOUT, Status.ERROR], ids=["stalled", "vanished"])
def test_a_bad_live_stream_does_not_stall_the_others(model: Path, videos: list[Path], then: Status) -> None:
    det = Detector(model, backend="cpu")
    image = decoded(videos[0])[0]
    streams = [Stream("bad", FakeLive(3, then, image)), Stream("good", open_source(str(videos[1])))]
    pipe = MultiPipeline(det, streams, [], PipelineConfig(batch=2, capture_timeout=0.2))
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(pipe.run()), daemon=True)
    t0 = time.monotonic()
    t.start()
    while ((streams[1].frames < LENGTHS[1] or (then is Status.ERROR and not streams[0].stop_reason))
           and time.monotonic() - t0 < 60):
        time.sleep(0.05)
    good_done = time.monotonic() - t0
    pipe.stop("test")
    t.join(timeout=30)
    assert not t.is_alive()
    assert out["streams"]["good"]["frames"] == LENGTHS[1] and out["streams"]["bad"]["frames"] == 3
    assert good_done < 30 and out["streams"]["good"]["latency_ms"]["end_to_end"]["p99"] < 2000
    if then is Status.ERROR:
        assert "lost for good" in out["streams"]["bad"]["error"] and out["errors"] == {"bad": out["streams"]["bad"]["error"]}
    else:
        assert out["streams"]["bad"]["error"] is None
    streams[1].source.close()
    det.close()


def test_stream_output_naming(tmp_path: Path) -> None:
    assert stream_output(Path("out_{stream}.mp4"), "s1", 2) == Path("out_s1.mp4")
    assert stream_output(tmp_path / "vids", "s0", 3) == tmp_path / "vids" / "s0.mp4"
    with pytest.raises(StpmError, match="{stream}"):
        stream_output(Path("out.mp4"), "s0", 2)


def test_cli_multi_stream(model: Path, videos: list[Path], tmp_path: Path) -> None:
    sources = tmp_path / "sources.txt"
    sources.write_text(f"# two lines\n{videos[2]}\n\n")
    events = tmp_path / "ng.jsonl"
    res = CliRunner().invoke(app, ["run", str(model), "-s", str(videos[0]), "-s", str(videos[1]), "--sources",
                                   str(sources), "--batch", "3", "--headless", "-o", str(tmp_path / "o_{stream}.avi"),
                                   "--events", str(events), "--threshold", "0.3", "--save-anomalies",
                                   str(tmp_path / "ng"), "--json"])
    assert res.exit_code == 0, res.stderr
    s = json.loads(res.stdout)
    assert [s["streams"][f"s{i}"]["frames"] for i in range(3)] == list(LENGTHS)
    for i, n in enumerate(LENGTHS):
        assert len(decoded(tmp_path / f"o_s{i}.avi")) == n
    lines = [json.loads(ln) for ln in events.read_text().splitlines()]
    assert len(lines) == s["ng_frames"] > 0
    assert {ln["stream"] for ln in lines} <= {"s0", "s1", "s2"} and all(ln["source"] != "multi" for ln in lines)
    assert all(p.name.startswith(("s0_", "s1_", "s2_")) for p in (tmp_path / "ng").iterdir())


# ---------------------------------------------------------------------------- tiled window
def test_tile_mosaic_places_each_stream_in_its_cell() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (60, 80, 3), np.uint8), rng.integers(0, 256, (120, 160, 3), np.uint8)
    out = tile_mosaic([a, None, b], ["", "", ""], max_width=1920)
    assert out.shape == (2 * 60, 2 * 80, 3)  # ceil(sqrt(3)) = 2 columns, cells of the first tile's size
    np.testing.assert_array_equal(out[:60, :80], a)
    assert not out[:60, 80:].any() and not out[60:, 80:].any()  # the missing tile and the empty cell are black
    np.testing.assert_array_equal(out[60:, :80], cv2.resize(b, (80, 60), interpolation=cv2.INTER_AREA))
    wide = tile_mosaic([a] * 9, [f"s{i}" for i in range(9)], max_width=150)  # 3 columns of 50 px
    assert wide.shape == (3 * round(50 * 60 / 80), 150, 3)
    labelled = tile_mosaic([a], ["s0"])
    assert labelled.shape == a.shape and not np.array_equal(labelled, a)  # the label is drawn on a copy
    assert tile_mosaic([a], [""]) is a  # one unlabelled tile: the single-source window, no copy


def test_tiled_window_shows_all_streams_and_q_stops_the_run(model: Path, videos: list[Path]) -> None:
    shown: list[np.ndarray] = []
    keys = iter([-1] * 3 + [ord("q")] * 1000)
    window = TiledWindowSink(["s0", "s1", "s2"], max_fps=0.0, show=lambda title, img: shown.append(img.copy()),
                             poll=lambda: next(keys))
    det = Detector(model, backend="cpu")
    streams = [Stream(f"s{i}", open_source(str(v))) for i, v in enumerate(videos)]
    summary = MultiPipeline(det, streams, [window], PipelineConfig(batch=3, hud=False)).run()
    for st in streams:
        st.source.close()
    det.close()
    assert summary["stop_reason"] == "window closed" and summary["frames"] < sum(LENGTHS)
    assert len(shown) >= 4 and all(m.shape == (2 * 128, 2 * 128, 3) for m in shown)
    assert window.stop_requested and window.describe() == "window 'stpm-run' (3 streams tiled)"
