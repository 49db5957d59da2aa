"""Everything that happens before a run folder exists: list and load every task's data, build the
frozen extractor and compute each image's features once. Bad input therefore fails here, with nothing
written."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from moleflow import registry
from moleflow.contract import model_traits
from moleflow.data.dataset import AnomalyDataset, load_split
from moleflow.features.cache import FeatureSet, extract_features


@dataclass
class TaskData:
    task_id: int
    class_name: str
    train: FeatureSet
    test: FeatureSet
    test_dataset: AnomalyDataset  # overlays are drawn from its pixels (decoded again unless test.images holds them)
    # what the model consumes: the patch features (default) or, for models with input_kind "images",
    # the images themselves (N,3,H,W in [0,1]); the router always uses the pooled backbone features
    train_inputs: torch.Tensor | None = None
    test_inputs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.train_inputs is None:
            self.train_inputs = self.train.patch
        if self.test_inputs is None:
            self.test_inputs = self.test.patch

    def test_image(self, i: int) -> torch.Tensor:
        """Test image i, (3,H,W) in [0,1]: the array already in memory when the model reads pixels, else
        decoded from its file (feature-only runs do not keep every test image in memory)."""
        return self.test.images[i] if self.test.images is not None else self.test_dataset[i]["image"]


def model_input_kind(cfg: Any) -> str:
    """'features' or 'images', declared by the registered model class (default: features)."""
    return model_traits(registry.get("models", cfg.flow.model)).input_kind


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_extractor(cfg: Any, device: torch.device) -> torch.nn.Module:
    b = cfg.backbone
    extractor = registry.create(  # every extractor takes the timm extractor's arguments
        "extractors",
        b.extractor,
        b.backbone_name,
        cfg.data.size,
        pretrained=b.pretrained,
        weights_path=b.backbone_weights or None,
        vit_blocks=b.vit_blocks or None,
        cnn_layers=tuple(b.cnn_layers),
        embed_dim=b.embed_dim or None,
        init_seed=cfg.train.seed,
    )
    return extractor.to(device)


def load_datasets(cfg: Any) -> list[tuple[AnomalyDataset, AnomalyDataset]]:
    d = cfg.data
    opts = {"split_percent": tuple(d.split_percent), "seed": d.split_seed}
    size = d.size
    # folder/csv formats have a val split; the test split is what every format reports on
    return [
        (load_split(d.dataset_format, d.data_path, cls, "train", size, **opts),
         load_split(d.dataset_format, d.data_path, cls, "test", size, **opts))
        for cls in d.task_classes
    ]


def prepare_tasks(cfg: Any, device: torch.device, progress: bool = True) -> tuple[list[TaskData], Any, float]:
    """Returns the tasks, the extractor and the seconds spent in the backbone."""
    datasets = load_datasets(cfg)
    wants_images = model_input_kind(cfg) == "images"
    extractor = build_extractor(cfg, device)
    cache = cfg.backbone.feature_cache or None
    start = time.perf_counter()
    tasks = []
    for t, (cls, (train_ds, test_ds)) in enumerate(zip(cfg.data.task_classes, datasets)):
        # a model that reads pixels gets the images decoded for the backbone, not decoded a second time
        kw = dict(batch_size=16, cache_dir=cache, device=device, progress=progress, keep_images=wants_images)
        train = extract_features(extractor, train_ds, desc=f"features {cls}/train", **kw)
        test = extract_features(extractor, test_ds, desc=f"features {cls}/test", **kw)
        tasks.append(TaskData(t, cls, train, test, test_ds, train.images, test.images))
    return tasks, extractor, time.perf_counter() - start
