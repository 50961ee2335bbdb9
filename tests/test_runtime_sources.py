"""Sources: URI parsing, GStreamer/FFMPEG decisions (pure), live reader thread with a fake
device (latest-frame-only, drops, reconnect with backoff), files and folders (loop, corrupt)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stpm_edge.errors import StpmError
from stpm_edge.apps.run.sources import (ImageFolderSource, LiveSource, ReconnectPolicy, SourceOptions, Status,
                                       VideoFileSource, capture_plan, make_source, open_source, parse_uri)
from stpm_edge.apps.run.sources.gstreamer import (APPSINK, complete_pipeline, csi_pipeline, ffmpeg_capture_options,
                                                 gstreamer_available, rtsp_pipeline)


def _never_dir(_: str) -> bool:
    return False


# ------------------------------------------------------------------------------ URI parsing
@pytest.mark.parametrize("uri, kind, location", [
    (0, "v4l2", "0"),
    ("2", "v4l2", "2"),
    ("/dev/video1", "v4l2", "/dev/video1"),
    ("v4l2:///dev/video3", "v4l2", "/dev/video3"),
    ("v4l2://1", "v4l2", "1"),
    ("csi://0", "csi", "0"),
    ("rtsp://user:pw@10.0.0.5:554/stream1", "rtsp", "rtsp://user:pw@10.0.0.5:554/stream1"),
    ("http://cam.local/video.mjpg", "stream", "http://cam.local/video.mjpg"),
    ("gst:videotestsrc ! appsink", "gst", "videotestsrc ! appsink"),
    ("gst://videotestsrc", "gst", "videotestsrc"),
    ("file:///data/line.mp4", "file", "/data/line.mp4"),
    ("file://rel/dir/a%20b.avi", "file", "rel/dir/a b.avi"),
    ("line.mp4", "file", "line.mp4"),
    ("parts/*.png", "images", "parts/*.png"),
    ("file://parts/img?.png", "images", "parts/img?.png"),
    ("part.JPG", "images", "part.JPG"),
])
def test_parse_uri_kinds(uri, kind, location):
    spec = parse_uri(uri, is_dir=_never_dir)
    assert (spec.kind, spec.location) == (kind, location)
    assert spec.live == (kind in ("v4l2", "csi", "rtsp", "stream", "gst"))


def test_parse_uri_folder_uses_is_dir():
    assert parse_uri("frames", is_dir=lambda p: p == "frames").kind == "images"
    assert parse_uri("frames", is_dir=_never_dir).kind == "file"


def test_parse_uri_options_and_device_index():
    spec = parse_uri("csi://1?width=1920&height=1080&fps=60&flip=2")
    assert spec.options == SourceOptions(width=1920, height=1080, fps=60, flip=2)
    rtsp = parse_uri("rtsp://cam/s?latency=200&codec=h265&transport=udp")
    assert rtsp.location == "rtsp://cam/s" and rtsp.options.latency == 200 and rtsp.options.codec == "h265"
    assert parse_uri("/dev/video4").device_index == 4 and parse_uri("v4l2:///dev/cam").device_index is None


@pytest.mark.parametrize("uri, message", [
    ("", "empty URI"),
    (-1, "camera index"),
    ("csi://front", "csi://N"),
    ("csi://0?flip=9", "flip must be 0..7"),
    ("csi://0?width=abc", "not an integer"),
    ("csi://0?zoom=2", "unknown option"),
    ("rtsp://cam/s?codec=vp9", "codec must be"),
    ("ftp://host/x", "unknown source scheme"),
    ("gst:", "empty GStreamer pipeline"),
])
def test_parse_uri_errors_are_one_line(uri, message):
    with pytest.raises(StpmError, match=message) as e:
        parse_uri(uri)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------- pipelines (pure strings)
def test_csi_pipeline_matches_the_jetson_recipe():
    p = csi_pipeline(1, SourceOptions(width=1920, height=1080, fps=30, flip=2))
    assert p == ("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1 ! "
                 "nvvidconv flip-method=2 ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
                 "appsink drop=true max-buffers=1 sync=false")
    assert "width=1280,height=720,framerate=30/1" in csi_pipeline(0)


def test_rtsp_pipeline_low_latency_and_decoders():
    p = rtsp_pipeline("rtsp://cam/s")
    assert p.startswith("rtspsrc location=rtsp://cam/s latency=0 drop-on-latency=true protocols=tcp ! ")
    assert "rtph264depay ! h264parse ! decodebin" in p and p.endswith(APPSINK)
    jetson = rtsp_pipeline("rtsp://cam/s", SourceOptions(codec="h265", decoder="jetson", transport="udp"))
    assert "rtph265depay ! h265parse ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx" in jetson
    assert "protocols" not in jetson
    assert "avdec_h264" in rtsp_pipeline("rtsp://x", SourceOptions(decoder="software"))
    assert "! decodebin !" in rtsp_pipeline("rtsp://x", SourceOptions(codec="auto"))
    assert "videoscale ! video/x-raw,width=640,height=360" in rtsp_pipeline("rtsp://x", SourceOptions(width=640, height=360))


def test_complete_pipeline_adds_an_appsink_only_when_missing():
    assert complete_pipeline("videotestsrc ! ") == f"videotestsrc ! videoconvert ! video/x-raw,format=BGR ! {APPSINK}"
    assert complete_pipeline("videotestsrc ! appsink") == "videotestsrc ! appsink"


def test_ffmpeg_options_and_gstreamer_detection():
    assert ffmpeg_capture_options(SourceOptions(transport="udp")) == \
        "rtsp_transport;udp|fflags;nobuffer|flags;low_delay|max_delay;0"
    assert "rtsp_transport" not in ffmpeg_capture_options(rtsp=False)
    assert gstreamer_available("  Video I/O:\n    GStreamer:                   YES (1.20.3)\n")
    assert not gstreamer_available("    GStreamer:                   NO\n")
    assert not gstreamer_available("")


def test_capture_plan_per_kind():
    cam = capture_plan(parse_uri("/dev/video2"), gstreamer=False, platform="linux")
    assert (cam.target, cam.api, cam.props["BUFFERSIZE"]) == (2, "V4L2", 1)
    sized = capture_plan(parse_uri("v4l2://0?width=640&height=480&fps=30"), gstreamer=False, platform="win32")
    assert sized.api == "ANY" and sized.props["FRAME_WIDTH"] == 640 and sized.props["FPS"] == 30
    ff = capture_plan(parse_uri("rtsp://cam/s"), gstreamer=False)
    assert ff.api == "FFMPEG" and "nobuffer" in ff.ffmpeg_options and ff.params["READ_TIMEOUT_MSEC"] > 0
    gst = capture_plan(parse_uri("rtsp://cam/s"), gstreamer=True, jetson=True)
    assert gst.api == "GSTREAMER" and "nvv4l2decoder" in gst.target
    assert capture_plan(parse_uri("csi://0"), gstreamer=True).target.startswith("nvarguscamerasrc sensor-id=0")
    with pytest.raises(StpmError, match="needs OpenCV built with GStreamer"):
        capture_plan(parse_uri("csi://0"), gstreamer=False)
    with pytest.raises(StpmError, match="needs OpenCV built with GStreamer"):
        capture_plan(parse_uri("gst:videotestsrc"), gstreamer=False)


def test_missing_camera_is_a_one_line_error():
    with pytest.raises(StpmError, match=r"camera 9 \(/dev/video9\): not found") as e:
        open_source(9)
    assert "\n" not in str(e.value)


# -------------------------------------------------------------------------- live: fake device
class FakeReader:
    """Frames numbered by their first pixel; ``fail_after`` reads, then read() fails."""

    def __init__(self, start: int = 0, fail_after: int | None = None, period: float = 0.002,
                 bad: tuple[int, ...] = ()) -> None:
        self.n, self.start, self.fail_after, self.period, self.bad = 0, start, fail_after, period, bad
        self.released = False

    def read(self):
        time.sleep(self.period)
        if self.fail_after is not None and self.n >= self.fail_after:
            return False, None
        self.n += 1
        if self.n in self.bad:
            return True, np.zeros((4, 4), np.float32)  # malformed
        frame = np.zeros((8, 8, 3), np.uint8)
        frame[0, 0, 0] = (self.start + self.n) % 256
        return True, frame

    def release(self) -> None:
        self.released = True


def _spec():
    return parse_uri("rtsp://fake/stream")


def test_backoff_policy():
    p = ReconnectPolicy(base_s=0.5, cap_s=8.0, attempts=3)
    assert [p.delay(i) for i in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert p.allows(2) and not p.allows(3)
    assert ReconnectPolicy(attempts=0).allows(10_000) and not ReconnectPolicy(enabled=False).allows(0)


def test_live_source_keeps_only_the_newest_frame():
    src = LiveSource(_spec(), lambda: FakeReader(period=0.001))
    with src:
        time.sleep(0.1)  # nobody captures: the slot is overwritten
        first = src.capture(timeout=1.0)
        second = src.capture(timeout=1.0)
    assert first.ok and second.ok and second.index > first.index
    assert src.stats.dropped >= 10
    assert src.stats.frames == 2


def test_live_source_reconnects_after_a_drop():
    opened: list[FakeReader] = []

    def opener() -> FakeReader:
        r = FakeReader(start=100 * len(opened), fail_after=5 if not opened else None)
        opened.append(r)
        return r

    src = LiveSource(_spec(), opener, ReconnectPolicy(base_s=0.01, cap_s=0.02))
    got = []
    with src:
        while len(got) < 12:
            cap = src.capture(timeout=2.0)
            assert cap.status in (Status.OK, Status.TIMEOUT)
            if cap.ok:
                got.append(int(cap.frame[0, 0, 0]))
    assert src.stats.reconnects == 1 and len(opened) == 2 and opened[0].released
    assert any(v > 100 for v in got)  # frames from the re-opened device


def test_live_source_gives_up_with_error_status():
    calls = []

    def opener() -> FakeReader:
        calls.append(1)
        if len(calls) > 1:
            raise StpmError("rtsp://fake/stream: could not connect")
        return FakeReader(fail_after=3)

    src = LiveSource(_spec(), opener, ReconnectPolicy(base_s=0.001, cap_s=0.001, attempts=3))
    with src:
        deadline = time.time() + 5
        while time.time() < deadline:
            cap = src.capture(timeout=0.5)
            if cap.status is Status.ERROR:
                break
    assert cap.status is Status.ERROR and "3 reconnect attempts failed" in cap.message
    assert len(calls) == 4 and src.stats.reconnects == 0


def test_live_source_without_reconnect_ends_and_counts_malformed_frames():
    src = LiveSource(_spec(), lambda: FakeReader(fail_after=6, bad=(2, 3)), ReconnectPolicy(enabled=False))
    statuses = []
    with src:
        for _ in range(50):
            cap = src.capture(timeout=0.5)
            statuses.append(cap.status)
            if cap.status is Status.ERROR:
                break
    assert statuses[-1] is Status.ERROR and src.stats.corrupt == 2
    assert "--reconnect" in cap.message


def test_live_source_timeout_and_close_while_idle():
    src = LiveSource(_spec(), lambda: FakeReader(period=0.5))
    src.open()
    t0 = time.perf_counter()
    assert src.capture(timeout=0.05).status is Status.TIMEOUT
    assert time.perf_counter() - t0 < 0.4
    src.close()
    assert threading.active_count() < 50


# ---------------------------------------------------------------------------- files, folders
def _video(path: Path, n: int, size=(32, 24)) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for i in range(n):
        w.write(np.full((size[1], size[0], 3), 10 * i % 256, np.uint8))
    w.release()
    return path


def test_video_file_every_frame_then_eos_and_loop(tmp_path):
    video = _video(tmp_path / "v.mp4", 7)
    with make_source(str(video)) as src:
        assert isinstance(src, VideoFileSource) and src.fps == pytest.approx(10)
        caps = [src.capture() for _ in range(8)]
    assert [c.status for c in caps] == [Status.OK] * 7 + [Status.EOS]
    assert [c.index for c in caps[:7]] == list(range(7))
    with open_source(f"file://{video}", loop=True) as src:
        caps = [src.capture() for _ in range(16)]
    assert all(c.ok for c in caps) and src.stats.loops == 2 and caps[-1].index == 15


def test_missing_and_unreadable_video_files(tmp_path):
    with pytest.raises(StpmError, match="no such video file"):
        open_source(str(tmp_path / "nope.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 10)
    with pytest.raises(StpmError, match="not a readable video file"):
        open_source(str(bad))


def test_image_folder_skips_corrupt_images_and_loops(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((6, 8, 3), i, np.uint8))
    (tmp_path / "1b.png").write_bytes(b"garbage")
    (tmp_path / "notes.txt").write_text("ignored")
    with open_source(str(tmp_path)) as src:
        assert isinstance(src, ImageFolderSource) and len(src.paths) == 4
        caps = [src.capture() for _ in range(4)]
    assert [c.status for c in caps] == [Status.OK] * 3 + [Status.EOS] and src.stats.corrupt == 1
    with open_source(str(tmp_path / "*.png"), loop=True) as src:
        values = [int(src.capture().frame[0, 0, 0]) for _ in range(7)]
    assert values == [0, 1, 2, 0, 1, 2, 0] and src.stats.loops == 2
    with pytest.raises(StpmError, match="no images found"):
        open_source(str(tmp_path / "*.jpg"))
