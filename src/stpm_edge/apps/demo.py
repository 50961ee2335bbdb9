"""``stpm-run --demo``: a sample model and an inspection video, built once and cached.

The first run makes sample data (brick photographs with painted defects), trains an STPM
model with the offline efficientnet_lite0 teacher, exports it to ONNX and renders an
inspection video in which defective parts pass the camera on known frames.

Training stops by rule, never by the clock (a fixed number of epochs, or earlier when the
held-out loss stops improving), so the same model — and the same detections — come out on a
quiet and on a busy machine; only the time differs. The threshold is the model's own (set
from held-out training images by the method's rule); ten further good parts of the "line"
that are not in the video are scored as a commissioning check, and the manifest says how
many of them the threshold would flag. (A threshold raised above the highest of ten good
parts was tried and dropped: one unusual good part then hides real defects.)
Everything lands atomically in ``$XDG_CACHE_HOME/stpm-edge/demo/<config>/`` (default
``~/.cache``); later runs find it there and start at once.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2

from stpm_edge.data.io import atomic_dir, list_images, read_image_bgr
from stpm_edge.data.sample import DEFECT_KINDS
from stpm_edge.errors import StpmError

logger = logging.getLogger(__name__)

DEMO_VERSION = 2
MANIFEST = "manifest.json"
N_CALIBRATION = 10  # good parts of the "line" (not in the video): the commissioning check


@dataclass(frozen=True)
class DemoConfig:
    image_size: int = 128  # the sample images, the model input and the video frames
    epochs: int = 40  # training stops here, or earlier after ``patience`` epochs without held-out progress
    patience: int = 10
    n_train: int = 40
    frames: int = 60
    fps: int = 10
    period: int = 8  # a defective part every ``period`` frames ...
    first: int = 5  # ... starting at this frame
    seed: int = 0

    def key(self) -> str:
        """The cache folder name: every setting that changes the result."""
        return (f"v{DEMO_VERSION}-{self.image_size}px-{self.epochs}ep-p{self.patience}-{self.n_train}train-"
                f"{self.frames}f-{self.period}p{self.first}-seed{self.seed}")

    def validated(self) -> DemoConfig:
        if not 64 <= self.image_size <= 512:
            raise StpmError(f"--demo-image-size {self.image_size}: choose 64..512")
        if self.epochs < 1 or self.patience < 1 or self.n_train < 4:
            raise StpmError(f"--demo-epochs {self.epochs}: epochs and patience must be positive (and n_train >= 4)")
        if self.frames < 2 or self.fps < 1 or self.period < 2 or not 0 <= self.first < self.frames:
            raise StpmError(f"--demo-frames {self.frames}: need at least 2 frames and a defect frame inside them")
        return self


@dataclass
class DemoAssets:
    root: Path
    model: Path
    video: Path
    defect_frames: list[int]
    manifest: dict
    cached: bool


def demo_cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CACHE_HOME/stpm-edge/demo``, else ``~/.cache/stpm-edge/demo``."""
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stpm-edge" / "demo"


def demo_plan(frames: int, period: int, first: int) -> list[int]:
    """The frame indices that show a defective part: ``first``, ``first + period``, ..."""
    return list(range(first, frames, period))


MODEL_THRESHOLD = 0.5  # normalised scores: 0.5 is the model's own image threshold


def _commissioning(model: Path, images: list[Path]) -> list[float]:
    """Normalised scores of good parts that are not in the video (a check of the threshold)."""
    from stpm_edge.runtime.detector import Detector  # noqa: PLC0415

    with Detector(model) as det:
        return [r.score for r in det.batch([read_image_bgr(p) for p in images])]


def _write_video(data: Path, out: Path, cfg: DemoConfig) -> list[dict]:
    good = [read_image_bgr(p) for p in list_images(data / "test" / "good")[N_CALIBRATION:]]
    per_kind = {kind: list_images(data / "test" / kind) for kind in DEFECT_KINDS}
    longest = max(len(v) for v in per_kind.values())
    defects = [(kind, per_kind[kind][i]) for i in range(longest) for kind in DEFECT_KINDS if i < len(per_kind[kind])]
    plan = set(demo_plan(cfg.frames, cfg.period, cfg.first))
    size = (cfg.image_size, cfg.image_size)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), cfg.fps, size)
    if not writer.isOpened():
        raise StpmError(f"{out}: OpenCV cannot write mp4v video")
    shown: list[dict] = []
    g = d = 0
    try:
        for i in range(cfg.frames):
            if i in plan:
                kind, path = defects[d % len(defects)]
                d += 1
                writer.write(read_image_bgr(path))
                shown.append({"frame": i, "kind": kind, "image": f"test/{kind}/{path.name}"})
            else:
                writer.write(good[g % len(good)])
                g += 1
    finally:
        writer.release()
    return shown


def _build(tmp: Path, cfg: DemoConfig, progress: Callable[[str], None]) -> dict:
    from stpm_edge.data.sample import make_sample_dataset  # noqa: PLC0415 - heavy imports only when building
    from stpm_edge.export.pipeline import ExportPlan, export_all  # noqa: PLC0415
    from stpm_edge.train.trainer import TrainConfig, train  # noqa: PLC0415

    t0 = time.perf_counter()
    data = tmp / "data"
    n_defects = len(demo_plan(cfg.frames, cfg.period, cfg.first))
    progress("making sample data (brick)")
    make_sample_dataset(data, "brick", seed=cfg.seed, image_size=cfg.image_size, n_train=cfg.n_train,
                        n_test_good=N_CALIBRATION + max(4, min(20, cfg.frames - n_defects)),
                        n_defect_per_kind=max(2, -(-n_defects // len(DEFECT_KINDS))))
    progress(f"training the sample model ({cfg.epochs} epochs at most; about 2 minutes on 2 cores)")
    res = train(data, tmp / "model.pt", TrainConfig(image_size=cfg.image_size, epochs=cfg.epochs, batch_size=8,
                                                     time_budget_min=None, patience=cfg.patience, seed=cfg.seed))
    aurocs = [h.image_auroc for h in res.history if h.image_auroc is not None]
    progress("exporting to ONNX")
    export_all(tmp / "model.pt", tmp, ExportPlan(name="model"))
    progress("checking the threshold on good parts of the line")
    calib = _commissioning(tmp / "model.onnx", list_images(data / "test" / "good")[:N_CALIBRATION])
    progress("rendering the inspection video")
    shown = _write_video(data, tmp / "inspection.mp4", cfg)
    shutil.rmtree(data)  # regenerable; the model, video and manifest are what the demo needs
    return {"format": "stpm-edge/demo", "version": DEMO_VERSION, "config": asdict(cfg), "model": "model.onnx",
            "checkpoint": "model.pt", "video": "inspection.mp4", "fps": cfg.fps, "frames": cfg.frames,
            "defects": shown, "defect_frames": [s["frame"] for s in shown],
            "threshold": MODEL_THRESHOLD, "commissioning_scores": [round(v, 4) for v in calib],
            "commissioning_flagged": sum(v >= MODEL_THRESHOLD for v in calib),
            "training": {"epochs_run": res.epochs_run, "best_epoch": res.best_epoch, "stop_reason": res.stop_reason,
                         "seconds": round(res.seconds, 1),
                         "test_image_auroc_at_best": _at(res.history, res.best_epoch),
                         "test_image_auroc_last": aurocs[-1] if aurocs else None},
            "build_seconds": round(time.perf_counter() - t0, 1)}


def _at(history: list, epoch: int) -> float | None:
    for h in history:
        if h.epoch == epoch:
            return h.image_auroc
    return None


def _load(root: Path, cached: bool) -> DemoAssets:
    manifest = json.loads((root / MANIFEST).read_text())
    return DemoAssets(root, root / manifest["model"], root / manifest["video"], list(manifest["defect_frames"]),
                      manifest, cached)


def build_demo(cache_dir: Path | None = None, config: DemoConfig = DemoConfig(), *, rebuild: bool = False,
               progress: Callable[[str], None] | None = None) -> DemoAssets:
    """The demo model and video for ``config``: from the cache, or built now (atomically)."""
    cfg = config.validated()
    root = Path(cache_dir or demo_cache_dir()) / cfg.key()
    if (root / MANIFEST).is_file() and not rebuild:
        return _load(root, cached=True)
    if root.exists():  # an older or partial build: start afresh
        shutil.rmtree(root)
    say = progress or (lambda msg: logger.info("demo: %s", msg))
    try:
        with atomic_dir(root) as tmp:
            manifest = _build(tmp, cfg, say)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    except (OSError, StpmError):
        if (root / MANIFEST).is_file():  # another process finished the same build first
            return _load(root, cached=True)
        raise
    return _load(root, cached=False)


def demo_report(defect_frames: list[int], ng_frames: list[int]) -> dict:
    """How the run's NG frames match the frames that show a defect."""
    want, got = set(defect_frames), set(ng_frames)
    return {"defect_frames": sorted(want), "ng_frames": sorted(got), "detected": len(want & got),
            "missed": sorted(want - got), "false_alarms": sorted(got - want)}

