"""Dataset layouts: MVTec AD (``train/good``, ``test/<type>``, ``ground_truth/<type>/<name>_mask.png``)
and plain image folders (train only). Problems are reported up front, with the file named,
instead of crashing deep inside a training or evaluation loop."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stpm_edge.data.io import list_images, read_image_bgr, read_mask
from stpm_edge.errors import StpmError

logger = logging.getLogger(__name__)

GOOD = "good"


@dataclass(frozen=True)
class TestSample:
    image: Path
    defect_type: str
    mask: Path | None = None

    @property
    def label(self) -> int:
        return 0 if self.defect_type == GOOD else 1


@dataclass
class Dataset:
    root: Path
    train: list[Path]
    test: list[TestSample] = field(default_factory=list)

    @property
    def has_test(self) -> bool:
        return bool(self.test) and any(s.label for s in self.test) and any(not s.label for s in self.test)

    @property
    def has_masks(self) -> bool:
        return any(s.mask is not None for s in self.test)

    def summary(self) -> dict:
        types: dict[str, int] = {}
        for s in self.test:
            types[s.defect_type] = types.get(s.defect_type, 0) + 1
        return {"root": str(self.root), "train": len(self.train), "test": len(self.test), "test_types": types}


def load_dataset(root: Path) -> Dataset:
    """Read an MVTec AD category folder, or a plain folder of good images."""
    root = Path(root)
    if not root.exists():
        raise StpmError(f"{root}: no such dataset folder")
    if not root.is_dir():
        raise StpmError(f"{root}: not a folder")
    train_dir = root / "train" / GOOD
    if not train_dir.is_dir():
        images = list_images(root)
        if not images:
            raise StpmError(f"{root}: neither an MVTec AD category (no train/good) nor a folder of images")
        return Dataset(root, images)
    train = list_images(train_dir)
    if not train:
        raise StpmError(f"{train_dir}: no images")
    test: list[TestSample] = []
    test_dir = root / "test"
    gt_dir = root / "ground_truth"
    if test_dir.is_dir():
        for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            for img in list_images(type_dir):
                mask = None
                if type_dir.name != GOOD and gt_dir.is_dir():
                    mask = gt_dir / type_dir.name / f"{img.stem}_mask.png"
                    if not mask.is_file():
                        raise StpmError(f"{img}: no ground-truth mask (expected {mask})")
                test.append(TestSample(img, type_dir.name, mask))
    if test and not gt_dir.is_dir():
        logger.info("%s: no ground_truth folder; pixel metrics are unavailable", root)
    return Dataset(root, train, test)


def load_test_sample(sample: TestSample) -> tuple[np.ndarray, np.ndarray | None]:
    """The BGR image and its bool mask (all-False for good images when masks exist)."""
    image = read_image_bgr(sample.image)
    if sample.mask is None:
        return image, None
    mask = read_mask(sample.mask)
    if mask.shape != image.shape[:2]:
        raise StpmError(f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                        f"image is {image.shape[1]}x{image.shape[0]}")
    return image, mask
