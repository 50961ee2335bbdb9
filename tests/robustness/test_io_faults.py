"""Faults at the edges, in-process: a full disk in the middle of a write, outputs in the wrong
place, hostile image headers, the log held back on failure."""
from __future__ import annotations

import errno
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from stpm_edge.data.io import MAX_IMAGE_PIXELS, atomic_path, check_writable, read_image_bgr
from stpm_edge.errors import StpmError


def test_full_disk_during_an_atomic_write_leaves_nothing(tmp_path: Path):
    dest = tmp_path / "model.onnx"
    with pytest.raises(StpmError, match="could not be written.*No space left") as e:
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_survives_a_failed_rewrite(tmp_path: Path):
    dest = tmp_path / "m.json"
    dest.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(dest) as tmp:
            tmp.write_text("new, half")
            raise KeyboardInterrupt
    assert dest.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_check_writable(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    check_writable(tmp_path / "new" / "deeper" / "m.pt")
    with pytest.raises(StpmError, match="is a folder"):
        check_writable(tmp_path / "dir")
    with pytest.raises(StpmError, match="is a file, not a folder"):
        check_writable(tmp_path / "file", folder=True)
    with pytest.raises(StpmError, match="is a file"):
        check_writable(tmp_path / "file" / "m.pt")


def _png(path: Path, w: int, h: int) -> Path:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def test_image_size_is_bounded_before_decoding(tmp_path: Path):
    with pytest.raises(StpmError, match="larger than the limit"):
        read_image_bgr(_png(tmp_path / "bomb.png", 50000, 50000))
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 1
    with pytest.raises(StpmError, match="larger than the limit"):
        read_image_bgr(_png(tmp_path / "just_over.png", side, side))
    with pytest.raises(StpmError, match="not a readable image"):
        read_image_bgr(_png(tmp_path / "small_broken.png", 4, 4))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(StpmError, match="not a readable image"):
        read_image_bgr(tmp_path / "empty.png")


def test_log_lines_are_held_until_the_work_starts(capsys):
    from stpm_edge.cli import common

    common.setup_logging(False)
    logging.getLogger("stpm_edge.x").info("chatter before the failure")
    common._fail()
    common.work_started()
    assert "chatter" not in capsys.readouterr().err
    logging.getLogger("stpm_edge.x").info("now live")
    assert "now live" in capsys.readouterr().err
    logging.basicConfig(force=True, handlers=[logging.NullHandler()])


def test_unexpected_errors_become_one_line():
    from stpm_edge.cli.common import one_line

    assert one_line(OSError(errno.ENOSPC, "No space left on device", "/x/y")).startswith("/x/y: no space left")
    assert "internal error: ValueError: bad" in one_line(ValueError("bad\nsecond line"))
    assert "\n" not in one_line(ValueError("a\nb"))
    assert one_line(RecursionError()) == "input nested too deeply"
