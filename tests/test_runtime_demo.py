"""``stpm-run --demo`` in a tiny configuration: built once into the cache, then a cache hit."""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
from _cli import CliRunner

from stpm_edge.cli.app import app
from stpm_edge.apps.demo import DemoConfig, build_demo, demo_cache_dir, demo_plan, demo_report

TINY = ["--demo-image-size", "64", "--demo-epochs", "1", "--demo-frames", "16"]


def test_demo_builds_once_then_starts_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    runner = CliRunner()
    first = runner.invoke(app, ["run", "--demo", *TINY, "--headless", "--json"], env=env)
    assert first.exit_code == 0, first.stderr
    s = json.loads(first.stdout)
    assert s["frames"] == 16 and s["demo"]["cached"] is False
    assert s["demo"]["defect_frames"] == demo_plan(16, 8, 5) == [5, 13]
    root = Path(s["demo"]["cache"])
    assert root.parent == tmp_path / "cache" / "stpm-edge" / "demo"
    assert sorted(p.name for p in root.iterdir()) == ["inspection.mp4", "manifest.json", "model.json", "model.onnx",
                                                      "model.pt"]
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    cap = cv2.VideoCapture(str(tmp_path / "stpm-demo.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 16

    t0 = time.perf_counter()
    second = runner.invoke(app, ["run", "--demo", *TINY, "--headless", "-o", "again.mp4", "--json"], env=env)
    assert second.exit_code == 0, second.stderr
    s2 = json.loads(second.stdout)
    assert s2["demo"]["cached"] is True and s2["frames"] == 16 and (tmp_path / "again.mp4").is_file()
    assert time.perf_counter() - t0 < 30
    manifest = json.loads((root / "manifest.json").read_text())
    assert s2["threshold"] == manifest["threshold"] >= 0.5


def test_build_demo_api_and_helpers(tmp_path):
    cfg = DemoConfig(image_size=64, epochs=1, n_train=8, frames=6, period=3, first=1)
    assets = build_demo(tmp_path, cfg)
    assert not assets.cached and assets.defect_frames == [1, 4] and assets.model.is_file()
    assert [d["kind"] for d in assets.manifest["defects"]] == ["scratch", "spot"]
    assert build_demo(tmp_path, cfg).cached
    assert demo_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/stpm-edge/demo")
    assert demo_cache_dir({}) == Path.home() / ".cache" / "stpm-edge" / "demo"
    m = assets.manifest
    assert m["threshold"] == 0.5 and len(m["commissioning_scores"]) == 10
    assert m["commissioning_flagged"] == sum(v >= 0.5 for v in m["commissioning_scores"])
    assert m["training"]["stop_reason"] == "epochs"  # by rule: never by the clock
    assert demo_report([5, 13], [5, 7]) == {"defect_frames": [5, 13], "ng_frames": [5, 7], "detected": 1,
                                           "missed": [13], "false_alarms": [7]}
