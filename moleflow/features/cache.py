"""Run the frozen extractor over a dataset once, optionally backed by an on-disk per-image cache.

The backbone is the expensive part of a run and never changes, so each image goes through it once; every
training epoch, the router and the evaluation reuse the resulting FeatureSet.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from moleflow.run_folder import atomic_write_bytes


@dataclass
class FeatureSet:
    patch: Tensor  # (N,h,w,D) float32, cpu
    pooled: Tensor  # (N,D) float32: mean of the patch features, for the router
    labels: Tensor  # (N,) long, 0 good / 1 anomalous
    masks: Tensor  # (N,1,H,W) uint8 0/1 at image size
    paths: list[str]
    images: Tensor | None = None  # (N,3,H,W) in [0,1], only when extract_features(keep_images=True)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Any) -> FeatureSet:
        """Rows selected by a slice, a sequence of ints, or an int/bool tensor, in that order."""
        if isinstance(idx, slice):
            index = torch.arange(len(self))[idx]
        else:
            index = torch.as_tensor(idx)
            if index.dtype == torch.bool:
                index = index.nonzero().flatten()
            index = index.long().flatten()
        return FeatureSet(self.patch[index], self.pooled[index], self.labels[index], self.masks[index],
                          [self.paths[i] for i in index.tolist()],
                          None if self.images is None else self.images[index])


class FeatureCache:
    """One safetensors file per image under `root`, keyed by the extractor identity, the file identity
    (absolute path, size, mtime_ns) and a digest of the exact backbone input, so a changed file, backbone
    or preprocessing never serves stale features."""

    def __init__(self, root: str | os.PathLike[str], identity: str) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.identity = identity

    def key(self, path: str, image: Tensor) -> str | None:
        try:
            stat = os.stat(path)
        except OSError:  # not a real file (e.g. generated in memory): nothing stable to key on
            return None
        digest = hashlib.sha256()
        for part in (self.identity, os.path.abspath(path), str(stat.st_size), str(stat.st_mtime_ns)):
            digest.update(part.encode())
            digest.update(b"\0")
        digest.update(image.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def _file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, key: str, grid: tuple[int, int], dim: int) -> tuple[Tensor, Tensor] | None:
        file = self._file(key)
        if not file.is_file():
            return None
        try:
            tensors = load_file(str(file))
            patch, pooled = tensors["patch"], tensors["pooled"]
        except Exception:  # noqa: BLE001 - an unreadable entry is a miss; it gets rewritten
            return None
        if tuple(patch.shape) != (*grid, dim) or tuple(pooled.shape) != (dim,):
            return None
        return patch, pooled

    def save(self, key: str, patch: Tensor, pooled: Tensor, path: str) -> None:
        # atomic: readers see the old entry or the complete new one, never half a file (a killed run leaves at
        # most a hidden temp file, which no key names); no fsync: a lost entry is only a cache miss
        data = save({"patch": patch.contiguous().clone(), "pooled": pooled.contiguous().clone()},
                    metadata={"identity": self.identity, "path": os.path.abspath(path)})
        atomic_write_bytes(self._file(key), data, fsync=False)


def _binary_masks(masks: Tensor) -> Tensor:
    threshold = 0.5 if masks.is_floating_point() else 0
    return (masks > threshold).to(torch.uint8)


def extract_features(
    extractor: Any,
    dataset: Any,
    *,
    images_per_pass: int = 16,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    desc: str = "features",
    progress: bool = True,
    num_workers: int = 0,
    keep_images: bool = False,
) -> FeatureSet:
    """Features of every item of `dataset` (dicts with image, mask, label, path), in dataset order.
    keep_images: also return the decoded images (for models that read pixels), so nobody decodes them again."""
    extractor = extractor.to(device)
    cache = FeatureCache(cache_dir, extractor.identity) if cache_dir else None
    loader = DataLoader(dataset, batch_size=images_per_pass, shuffle=False, num_workers=num_workers)
    patches, pooled, labels, masks, paths, kept = [], [], [], [], [], []
    hits = 0
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress) as bar:
        for batch in loader:
            images = batch["image"]
            batch_paths = [str(p) for p in batch["path"]]
            keys = [cache.key(p, img) if cache else None for p, img in zip(batch_paths, images)]
            found = [cache.load(k, extractor.grid, extractor.dim) if cache and k else None for k in keys]
            todo = [i for i, f in enumerate(found) if f is None]
            if todo:
                new_patch, new_pooled = extractor(images[todo].to(device))
                new_patch, new_pooled = new_patch.float().cpu(), new_pooled.float().cpu()
                for j, i in enumerate(todo):
                    found[i] = (new_patch[j], new_pooled[j])
                    if cache and keys[i]:
                        cache.save(keys[i], new_patch[j], new_pooled[j], batch_paths[i])
            hits += len(images) - len(todo)
            patches.append(torch.stack([f[0] for f in found]))
            pooled.append(torch.stack([f[1] for f in found]))
            labels.append(torch.as_tensor(batch["label"]).long().flatten())
            masks.append(_binary_masks(batch["mask"]))
            paths.extend(batch_paths)
            if keep_images:
                kept.append(images)
            bar.update(len(images))
            if cache:
                bar.set_postfix(cached=hits)
    if not paths:
        h, w = extractor.grid
        H, W = getattr(extractor, "img_size", (0, 0))
        return FeatureSet(torch.zeros(0, h, w, extractor.dim), torch.zeros(0, extractor.dim),
                          torch.zeros(0, dtype=torch.long), torch.zeros(0, 1, H, W, dtype=torch.uint8), [],
                          torch.zeros(0, 3, H, W) if keep_images else None)
    return FeatureSet(torch.cat(patches), torch.cat(pooled), torch.cat(labels), torch.cat(masks), paths,
                      torch.cat(kept) if keep_images else None)
