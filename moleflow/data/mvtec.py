"""MVTec AD layout (MPDD and the embedded synthetic benchmark use the same one).

    <root>/<class>/train/good/*.png
    <root>/<class>/test/good/*.png
    <root>/<class>/test/<defect>/*.png
    <root>/<class>/ground_truth/<defect>/<stem>_mask.png

train = train/good; test = every test/* folder; val = [] (the layout has none, so split_percent and seed
are accepted for a uniform lister signature and ignored). Good images get no mask (all zeros); every
defect image must have its mask. Classes are the subfolders of root that hold a train/ or test/ folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from moleflow.data.samples import (NORMAL_DEFECT_TYPE, Sample, check_split, list_images, require_class,
                                   require_root, sorted_samples, subfolder_classes)
from moleflow.errors import MoleflowError

LAYOUT = "<class>/train/good, <class>/test/<defect>, <class>/ground_truth/<defect>"


def mvtec_classes(root: str | Path) -> list[str]:
    return subfolder_classes(Path(root), lambda p: (p / "train").is_dir() or (p / "test").is_dir())


def _train(class_dir: Path, class_name: str) -> list[Sample]:
    folder = class_dir / "train" / NORMAL_DEFECT_TYPE
    images = list_images(folder)
    if not images:
        raise MoleflowError(f"no training images in {folder}; put the normal images (png/jpg/bmp/tif) there")
    return [Sample(p, 0, None, NORMAL_DEFECT_TYPE, class_name) for p in images]


def _test(class_dir: Path, class_name: str) -> list[Sample]:
    test_dir = class_dir / "test"
    if not test_dir.is_dir():
        raise MoleflowError(f"test folder {test_dir} not found; the MVTec layout needs {LAYOUT}")
    samples = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        defect = defect_dir.name
        for image in list_images(defect_dir):
            if defect == NORMAL_DEFECT_TYPE:
                samples.append(Sample(image, 0, None, defect, class_name))
                continue
            mask = class_dir / "ground_truth" / defect / f"{image.stem}_mask.png"
            if not mask.is_file():
                raise MoleflowError(f"defect image {image} has no mask: expected {mask}; add it or remove the image")
            samples.append(Sample(image, 1, mask, defect, class_name))
    if not samples:
        raise MoleflowError(f"no test images in {test_dir}; the MVTec layout needs {LAYOUT}")
    return samples


def _list(fmt: str, root: str | Path, class_name: str, split: str) -> list[Sample]:
    check_split(split)
    root = require_root(root, fmt)
    if (root / "train").is_dir() and not (root / class_name).is_dir():  # a common slip: root = one class
        raise MoleflowError(f"data path {root} is a single class folder; pass its parent {root.parent} as --data_path")
    require_class(class_name, mvtec_classes(root), root, fmt)
    class_dir = root / class_name
    if split == "train":
        return sorted_samples(_train(class_dir, class_name))
    if split == "test":
        return sorted_samples(_test(class_dir, class_name))
    return []


def list_mvtec(root: str | Path, class_name: str, split: str, *,
               split_percent: Sequence[int] = (70, 15, 15), seed: int = 0) -> list[Sample]:
    """Samples of one class and split of an MVTec AD tree (split_percent/seed unused: pre-split layout)."""
    return _list("mvtec", root, class_name, split)


def list_mpdd(root: str | Path, class_name: str, split: str, *,
              split_percent: Sequence[int] = (70, 15, 15), seed: int = 0) -> list[Sample]:
    """MPDD ships in the MVTec AD layout; only the format name in messages differs."""
    return _list("mpdd", root, class_name, split)


# `classes` is the optional hook dataset.list_classes looks for on any registered lister
list_mvtec.classes = mvtec_classes  # type: ignore[attr-defined]
list_mpdd.classes = mvtec_classes  # type: ignore[attr-defined]
