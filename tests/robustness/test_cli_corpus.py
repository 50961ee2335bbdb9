"""A corpus of careless and hostile inputs: every one must end in one line, a meaningful exit
code and nothing left behind (the classes of the reliability issue: output paths, text from
files, hostile metadata, images, options, all-or-nothing, interrupts, misleading messages)."""
from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from ._harness import assert_one_line_failure, interrupt_after, run, snapshot

pytestmark = pytest.mark.slow


def _png_header(path: Path, w: int, h: int) -> Path:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def exported(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("robust_export")
    o = run("stpm-export", small_model, "-o", out, "--no-engine")
    assert o.code == 0, o.stderr
    return out / "model.onnx"


def _with_metadata(src: Path, dst: Path, edit) -> Path:
    m = onnx.load(str(src))
    meta = json.loads(next(p.value for p in m.metadata_props if p.key == "stpm_edge"))
    text = edit(meta)
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, {"stpm_edge": text if isinstance(text, str) else json.dumps(meta)})
    onnx.save(m, str(dst))
    return dst


def _good_folder(brick_data: Path, dst: Path, n: int) -> Path:
    dst.mkdir()
    for p in sorted((brick_data / "train" / "good").iterdir())[:n]:
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


# -- 1. output paths ------------------------------------------------------------------------

def test_train_output_is_a_folder(brick_data, tmp_path):
    before = snapshot(tmp_path)
    o = run("stpm-train", brick_data, "-o", tmp_path, "--epochs", "1")
    assert_one_line_failure(o, "stpm-train", match="is a folder")
    assert snapshot(tmp_path) == before


def test_train_output_below_a_file(brick_data, tmp_path):
    (tmp_path / "f").write_text("x")
    before = snapshot(tmp_path)
    o = run("stpm-train", brick_data, "-o", tmp_path / "f" / "m.pt", "--epochs", "1")
    assert_one_line_failure(o, "stpm-train", match="is a file")
    assert snapshot(tmp_path) == before


def test_export_into_a_file(small_model, tmp_path):
    (tmp_path / "out").write_text("x")
    before = snapshot(tmp_path)
    o = run("stpm-export", small_model, "-o", tmp_path / "out", "--no-engine")
    assert_one_line_failure(o, "stpm-export", match="is a file")
    assert snapshot(tmp_path) == before


def test_export_name_cannot_escape(small_model, tmp_path):
    before = snapshot(tmp_path)
    o = run("stpm-export", small_model, "-o", tmp_path / "out", "--name", "../x", "--no-engine")
    assert_one_line_failure(o, "stpm-export", match="plain file name")
    assert snapshot(tmp_path) == before


def test_sample_never_replaces_a_file(tmp_path):
    (tmp_path / "f").write_text("keep me")
    o = run("stpm", "data", "sample", tmp_path / "f", "--overwrite", "--n-train", "2")
    assert_one_line_failure(o, "stpm data sample", match="is a file")
    assert (tmp_path / "f").read_text() == "keep me"


def test_run_events_into_a_folder(exported, brick_data, tmp_path):
    (tmp_path / "ev").mkdir()
    before = snapshot(tmp_path)
    o = run("stpm-run", exported, "-s", brick_data / "test" / "good", "--headless", "--events", tmp_path / "ev")
    assert_one_line_failure(o, "stpm-run", match="is a folder")
    assert snapshot(tmp_path) == before


def test_run_video_below_a_file(exported, brick_data, tmp_path):
    (tmp_path / "f").write_text("x")
    before = snapshot(tmp_path)
    o = run("stpm-run", exported, "-s", brick_data / "test" / "good", "--headless", "-o", tmp_path / "f" / "o.mp4")
    assert_one_line_failure(o, "stpm-run", match="is a file")
    assert snapshot(tmp_path) == before


# -- 2. text from files and users is data ------------------------------------------------------

def test_info_prints_markup_in_metadata_literally(exported, tmp_path):
    bad = _with_metadata(exported, tmp_path / "m.onnx", lambda m: m["versions"].update(note="[/x] [bold]hi"))
    o = run("stpm", "info", bad)
    assert o.code == 0, o.stderr
    assert "[/x] [bold]hi" in o.stderr


def test_metadata_nested_200000_deep(exported, tmp_path):
    bad = _with_metadata(exported, tmp_path / "m.onnx", lambda m: json.dumps(m)[:-1] + ', "deep": '
                         + "[" * 200_000 + "]" * 200_000 + "}")
    for prog, args in (("stpm", ["info", bad]), ("stpm-eval", [bad, tmp_path])):
        o = run(prog, *args)
        assert_one_line_failure(o, prog)


def test_output_folder_with_brackets(small_model, tmp_path):
    out = tmp_path / "out[1]"
    o = run("stpm-export", small_model, "-o", out, "--no-engine")
    assert o.code == 0, o.stderr
    assert str(out / "model.onnx") in o.stderr.replace("\n", "")


# -- 3. hostile metadata and outputs on every consumer ------------------------------------------

@pytest.mark.parametrize("value", ["a string", float("nan"), None])
def test_bad_threshold(exported, brick_data, tmp_path, value):
    bad = _with_metadata(exported, tmp_path / "m.onnx", lambda m: m.update(threshold=value))
    for prog, args in (("stpm-eval", [bad, brick_data]), ("stpm-run", [bad, "-s", brick_data / "test" / "good",
                                                                          "--headless"])):
        o = run(prog, *args)
        assert_one_line_failure(o, prog, match="threshold")


def test_graph_without_our_metadata(exported, brick_data, tmp_path):
    m = onnx.load(str(exported))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "plain.onnx"))
    o = run("stpm-eval", tmp_path / "plain.onnx", brick_data)
    assert_one_line_failure(o, "stpm-eval", match="not an stpm-edge model")


def test_nan_outputs_are_refused(brick_data, tmp_path, exported):
    m = onnx.load(str(exported))
    out = m.graph.output[1].name
    nan = onnx.helper.make_tensor("nan_c", onnx.TensorProto.FLOAT, [1], [math.nan])
    m.graph.initializer.append(nan)
    last = next(n for n in m.graph.node if out in n.output)
    last.output[list(last.output).index(out)] = out + "_raw"
    m.graph.node.append(onnx.helper.make_node("Mul", [out + "_raw", "nan_c"], [out]))
    onnx.save(m, str(tmp_path / "nan.onnx"))
    o = run("stpm-eval", tmp_path / "nan.onnx", brick_data)
    assert_one_line_failure(o, "stpm-eval", match="NaN")


# -- 4. images --------------------------------------------------------------------------------

def test_huge_png_header_in_training_data(brick_data, tmp_path):
    data = _good_folder(brick_data, tmp_path / "good", 5)
    _png_header(data / "zz_bomb.png", 50000, 50000)
    o = run("stpm-train", data, "-o", tmp_path / "m.pt", "--epochs", "1")
    assert_one_line_failure(o, "stpm-train", match="larger than the limit")
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0"])
def test_empty_and_truncated_images_say_one_line(brick_data, tmp_path, content):
    data = _good_folder(brick_data, tmp_path / "good", 5)
    (data / "zz_bad.png").write_bytes(content)
    o = run("stpm-train", data, "-o", tmp_path / "m.pt", "--epochs", "1")
    assert_one_line_failure(o, "stpm-train", match="zz_bad.png")
    assert "libpng" not in o.stderr


def test_huge_image_in_a_stream_is_skipped(exported, brick_data, tmp_path):
    folder = _good_folder(brick_data, tmp_path / "frames", 3)
    _png_header(folder / "zz_bomb.png", 50000, 50000)
    o = run("stpm-run", exported, "-s", folder, "--headless", "--json")
    assert o.code == 0, o.stderr
    s = json.loads(o.stdout)
    assert s["frames"] == 3 and s["corrupt"] == 1


# -- 6. options -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, match", [
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--blur", "-1"], "--blur"), (["--blur", "nan"], "--blur"),
    (["--blur", "1000"], "--blur"), (["--seed", "-1"], "--seed"), (["--seed", str(2 ** 40)], "--seed"),
    (["--patience", "-1"], "--patience"), (["--time-budget", "-1"], "--time-budget"),
    (["--val-every", "-1"], "--val-every"), (["--method", "nope"], "unknown method"),
    (["--opt", "x"], "--opt"),
])
def test_train_options(brick_data, tmp_path, args, match):
    o = run("stpm-train", brick_data, "-o", tmp_path / "m.pt", *args)
    assert_one_line_failure(o, "stpm-train", match=match)
    assert not (tmp_path / "m.pt").exists()


def test_eval_batch_size_zero(exported, brick_data):
    assert_one_line_failure(run("stpm-eval", exported, brick_data, "--batch-size", "0"), "stpm-eval",
                            match="--batch-size")


@pytest.mark.parametrize("args", [["--batch", "0"], ["--max-frames", "0"]])
def test_run_options_before_any_file(exported, brick_data, tmp_path, args):
    o = run("stpm-run", exported, "-s", brick_data / "test" / "good", "--headless", "--events", tmp_path / "ev.jsonl",
            *args)
    assert_one_line_failure(o, "stpm-run", match=args[0])
    assert not (tmp_path / "ev.jsonl").exists()


# -- 7. all-or-nothing ------------------------------------------------------------------------

def test_export_int8_with_too_few_calibration_images_writes_nothing(small_model, brick_data, tmp_path):
    calib = _good_folder(brick_data, tmp_path / "calib", 7)
    o = run("stpm-export", small_model, "-o", tmp_path / "out", "--int8", "--calib", calib, "--no-engine")
    assert_one_line_failure(o, "stpm-export", match="at least 8")
    assert not (tmp_path / "out").exists()


# -- 8. interrupts ----------------------------------------------------------------------------

def test_ctrl_c_during_start_up(small_model, tmp_path):
    # in the middle of the imports (numpy is mapped, PyTorch is still loading), on a loaded machine too
    o = interrupt_after("stpm-export", [small_model, "-o", tmp_path / "out"], 0.1, once_loaded="numpy")
    assert o.code == 130, o.stderr
    assert "Traceback" not in o.stderr and len([ln for ln in o.stderr.splitlines() if ln.strip()]) == 1
    assert not (tmp_path / "out").exists()


def test_ctrl_c_in_calibration_leaves_nothing(exported, brick_data, tmp_path):
    import shutil

    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(exported, work / "model.onnx")
    before = snapshot(work)
    o = interrupt_after("stpm-calibrate", [work / "model.onnx", "--calib", brick_data, "--calib-method", "entropy"],
                        6.0)
    assert o.code in (130, 0), o.stderr
    if o.code == 130:
        assert snapshot(work) == before, "an interrupted calibration left files behind"


# -- 9. messages that point the right way -------------------------------------------------------

def test_random_bytes_are_not_sent_to_trust_checkpoint(brick_data, tmp_path):
    junk = tmp_path / "m.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    o = run("stpm-eval", junk, brick_data)
    assert_one_line_failure(o, "stpm-eval", match="not a readable checkpoint")
    assert "--trust-checkpoint" not in o.stderr


def test_engine_given_to_eval(brick_data, tmp_path):
    eng = tmp_path / "model.fp16.engine"
    eng.write_bytes(b"\0" * 64)
    o = run("stpm-eval", eng, brick_data)
    assert_one_line_failure(o, "stpm-eval")
    assert "--trust-checkpoint" not in o.stderr and "pickle" not in o.stderr
