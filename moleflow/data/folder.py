"""Folder format: a class is a folder of normal and defect images, split by the anomaly-aware rule.

    <root>/<class>/images/good/*.png        normal images
    <root>/<class>/images/defect/*.png      anomalous images; any other subfolder of images/ is also
                                             anomalous, with the folder name as its defect type
    <root>/<class>/masks/                   optional; the mask of images/<d>/<stem>.* is the first of
                                             masks/<d>/<stem>.png, masks/<d>/<stem>_mask.png,
                                             masks/<stem>.png, masks/<stem>_mask.png

If masks/ exists every anomalous image needs a mask (a missing one is an error naming where it was
looked for); without masks/ anomalous images get mask_path None, i.e. an all-zero mask, and only
image-level metrics are meaningful. train/val/test come from `splits.anomaly_aware_split`.
"""

from __future__ import annotations

from pathlib import Path

from moleflow.data.samples import (NORMAL_DEFECT_TYPE, Sample, list_images, require_class,
                                   require_root, subfolder_classes)
from moleflow.data.splits import splitting_lister
from moleflow.errors import MoleflowError


def folder_classes(root: str | Path) -> list[str]:
    return subfolder_classes(Path(root), lambda p: (p / "images").is_dir())


def _mask_candidates(masks_dir: Path, defect: str, stem: str) -> list[Path]:
    return [masks_dir / defect / f"{stem}.png", masks_dir / defect / f"{stem}_mask.png",
            masks_dir / f"{stem}.png", masks_dir / f"{stem}_mask.png"]


def _find_mask(masks_dir: Path, image: Path, defect: str) -> Path:
    candidates = _mask_candidates(masks_dir, defect, image.stem)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MoleflowError(f"defect image {image} has no mask: expected {candidates[2]} or {candidates[3]}; "
                        "add it or remove the image")


def list_all_folder(root: str | Path, class_name: str) -> list[Sample]:
    """Every image of one class, before splitting."""
    root = require_root(root, "folder")
    require_class(class_name, folder_classes(root), root, "folder")
    class_dir = root / class_name
    images_dir = class_dir / "images"
    good = list_images(images_dir / NORMAL_DEFECT_TYPE)
    if not good:
        raise MoleflowError(f"no normal images in {images_dir / NORMAL_DEFECT_TYPE}; "
                            "put the defect-free images (png/jpg/bmp/tif) there")
    samples = [Sample(p, 0, None, NORMAL_DEFECT_TYPE, class_name) for p in good]
    masks_dir = class_dir / "masks"
    has_masks = masks_dir.is_dir()
    for defect_dir in sorted(p for p in images_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if defect_dir.name == NORMAL_DEFECT_TYPE:
            continue
        for image in list_images(defect_dir):
            mask = _find_mask(masks_dir, image, defect_dir.name) if has_masks else None
            samples.append(Sample(image, 1, mask, defect_dir.name, class_name))
    return samples


list_folder = splitting_lister(list_all_folder, folder_classes, "folder")
