"""From a format name to a torch Dataset: registry lookup, listing, up-front checks, loading.

Formats are listers registered in the `moleflow.datasets` entry-point group (built-ins and plugins
alike), called as `lister(root, class_name, split, split_percent=..., seed=...) -> list[Sample]`.
A lister may carry a `classes(root) -> list[str]` attribute naming the classes it can list; without
it, the subfolders of root are taken as the classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from moleflow import registry
from moleflow.data.image_io import check_same_size, image_size, load_pair
from moleflow.data.samples import Sample, check_split, require_root, subfolder_classes
from moleflow.errors import MoleflowError


def list_classes(fmt: str, root: str | Path) -> list[str]:
    """Class names the `fmt` lister finds under `root` (sorted)."""
    lister = registry.get("datasets", fmt)
    path = require_root(root, fmt)
    hook = getattr(lister, "classes", None)
    return sorted(hook(path)) if hook is not None else subfolder_classes(path, lambda p: True)


def check_files(samples: Sequence[Sample]) -> None:
    """Header-only pass over every file: unreadable images and mask/image size mismatches fail here,
    before any feature is computed, instead of half-way through a run."""
    for s in samples:
        size = image_size(s.path)
        if s.mask_path is not None:
            check_same_size(s.path, size, s.mask_path, image_size(s.mask_path))


class AnomalyDataset(Dataset):
    """Samples loaded at a fixed size: image float32 (3,H,W) in [0,1] (not normalised), mask float32
    (1,H,W) in {0,1}, label int, path str, index int."""

    def __init__(self, samples: list[Sample], img_size: tuple[int, int]):
        self.samples = list(samples)
        self.img_size = (int(img_size[0]), int(img_size[1]))  # (H, W), parsed once: Config.data.size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        image, mask = load_pair(s.path, s.mask_path, self.img_size)
        return {"image": image, "mask": mask, "label": int(s.label), "path": str(s.path), "index": int(i)}

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([s.label for s in self.samples], dtype=torch.long)

    @property
    def has_masks(self) -> bool:
        """True if there are anomalous samples and every one has a mask (pixel metrics are meaningful)."""
        anomalous = [s for s in self.samples if s.label != 0]
        return bool(anomalous) and all(s.mask_path is not None for s in anomalous)


def load_split(fmt: str, root: str | Path, class_name: str, split: str,
               img_size: tuple[int, int], **opts: Any) -> AnomalyDataset:
    """One class and split of a data set in format `fmt`, checked and ready to iterate.

    opts go to the lister (split_percent, seed). train and test must not be empty; val may be (the
    pre-split layouts have none)."""
    check_split(split)
    lister = registry.get("datasets", fmt)
    samples = lister(root, class_name, split, **opts)
    if not samples and split != "val":
        raise MoleflowError(f"no {split} images for class '{class_name}' in {root} ({fmt} format); "
                            "add images or change --split_percent")
    check_files(samples)
    return AnomalyDataset(samples, img_size)
