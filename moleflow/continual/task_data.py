"""Everything that happens before a run folder exists: list and load every task's data, build the
frozen extractor and compute each image's features once. Bad input therefore fails here, with nothing
written."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from moleflow import registry
from moleflow.data.dataset import AnomalyDataset, load_split
from moleflow.data.streams import task_name
from moleflow.features.cache import FeatureSet, extract_features


@dataclass
class ClassTest:
    """One class's test set inside a task: metrics are reported per class."""
    class_name: str
    task_id: int
    test: FeatureSet
    dataset: AnomalyDataset  # overlays are drawn from its pixels (decoded again unless test.images holds them)
    # what the model scores: the patch features (default) or, for models with input_kind "images", the images
    inputs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.inputs is None:
            self.inputs = self.test.patch

    def image(self, i: int) -> torch.Tensor:
        """Test image i, (3,H,W) in [0,1]: the array already in memory when the model reads pixels, else
        decoded from its file (feature-only runs do not keep every test image in memory)."""
        return self.test.images[i] if self.test.images is not None else self.dataset[i]["image"]


@dataclass
class TaskData:
    """One task of the stream: one class (1xN streams) or several (N-M scenarios), trained together."""
    task_id: int
    classes: list[str]
    train: FeatureSet  # every class's training images, concatenated in class order
    tests: list[ClassTest]
    # what the model trains on: the patch features (default) or the images (input_kind "images");
    # the router always uses the pooled backbone features
    train_inputs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.train_inputs is None:
            self.train_inputs = self.train.patch

    @property
    def name(self) -> str:
        return task_name(self.classes)


def concat_features(parts: list[FeatureSet]) -> FeatureSet:
    """The training sets of a task's classes as one set (a one-class task returns its set unchanged)."""
    if len(parts) == 1:
        return parts[0]
    images = None if any(p.images is None for p in parts) else torch.cat([p.images for p in parts])
    return FeatureSet(torch.cat([p.patch for p in parts]), torch.cat([p.pooled for p in parts]),
                      torch.cat([p.labels for p in parts]), torch.cat([p.masks for p in parts]),
                      [path for p in parts for path in p.paths], images)


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


def load_datasets(cfg: Any) -> dict[str, tuple[AnomalyDataset, AnomalyDataset]]:
    """class -> (train, test) for every class of the stream, all listed before any image is read."""
    d = cfg.data
    opts = {"split_percent": tuple(d.split_percent), "seed": d.split_seed}
    size = d.size
    # folder/csv formats have a val split; the test split is what every format reports on
    return {cls: (load_split(d.dataset_format, d.data_path, cls, "train", size, **opts),
                  load_split(d.dataset_format, d.data_path, cls, "test", size, **opts))
            for cls in d.classes}


def prepare_tasks(cfg: Any, device: torch.device, progress: bool = True) -> tuple[list[TaskData], Any, float]:
    """Returns the tasks, the extractor and the seconds spent in the backbone."""
    datasets = load_datasets(cfg)
    wants_images = cfg.spec.input_kind == "images"
    extractor = build_extractor(cfg, device)
    cache = cfg.backbone.feature_cache or None
    start = time.perf_counter()
    tasks = []
    # a model that reads pixels gets the images decoded for the backbone, not decoded a second time
    kw = dict(images_per_pass=16, cache_dir=cache, device=device, progress=progress, keep_images=wants_images)
    for t, classes in enumerate(cfg.data.tasks):
        trains, tests = [], []
        for cls in classes:
            train_ds, test_ds = datasets[cls]
            trains.append(extract_features(extractor, train_ds, desc=f"features {cls}/train", **kw))
            test = extract_features(extractor, test_ds, desc=f"features {cls}/test", **kw)
            tests.append(ClassTest(cls, t, test, test_ds, test.images))
        train = concat_features(trains)
        tasks.append(TaskData(t, list(classes), train, tests, train.images))
    return tasks, extractor, time.perf_counter() - start
