"""The record every data-set lister returns, and the checks the listers share.

A lister turns one data-set layout into a list of `Sample`s; nothing here opens an image. Every
lister returns its samples sorted by path so runs do not depend on the file system's listing order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from moleflow.errors import MoleflowError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
NORMAL_DEFECT_TYPE = "good"


@dataclass(frozen=True)
class Sample:
    path: Path  # image file
    label: int  # 0 normal, 1 anomalous
    mask_path: Path | None  # None => all-zero mask
    defect_type: str  # "good" for normal images
    class_name: str


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise MoleflowError(f"unknown split '{split}'; use one of: {', '.join(SPLITS)}")
    return split


def require_root(root: str | Path, fmt: str) -> Path:
    """The data root as a Path, or an error naming it."""
    path = Path(root)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise MoleflowError(f"data path {path} {what}; pass --data_path with the root of your {fmt} data set")
    return path


def require_class(class_name: str, classes: list[str], where: Path | str, fmt: str) -> None:
    """Error listing the classes found when `class_name` is not one of them."""
    if class_name in classes:
        return
    found = ", ".join(classes) if classes else "none"
    raise MoleflowError(f"unknown class '{class_name}' in {where} ({fmt} format); classes found: {found}")


def subfolder_classes(root: Path, is_class: Callable[[Path], bool]) -> list[str]:
    """Sorted names of the non-hidden subfolders of `root` that pass `is_class`."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_class(p))


def is_image_file(path: Path) -> bool:
    # dot-files are skipped: macOS leaves `._name.png` resource forks next to copied images
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder` (extension case-insensitive), sorted; [] if it is missing."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def path_inside(root: Path, base: Path, relative: str, where: str) -> Path:
    """`relative` (a path read from a file) joined to `base`, checked to stay under `root` and to exist.

    The containment check is lexical (normpath, not resolve) on purpose: data sets are often built from
    symlinks, and a symlink inside the root that points elsewhere is the user's choice, whereas `../x`
    or an absolute path in a CSV is almost always a mistake.
    """
    raw = relative.strip()
    if not raw:
        raise MoleflowError(f"{where}: empty file name; fill in the path or remove the row")
    target = Path(os.path.normpath(base / raw))  # an absolute `raw` replaces base, as intended
    abs_root, abs_target = os.path.abspath(root), os.path.abspath(target)
    if os.path.commonpath([abs_root, abs_target]) != abs_root:
        raise MoleflowError(f"{where}: path '{raw}' leaves the data root {root}; use a path inside it")
    if not target.is_file():
        raise MoleflowError(f"{where}: file {target} not found; fix the path or remove the row")
    return target


def sorted_samples(samples: Iterable[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: str(s.path))
