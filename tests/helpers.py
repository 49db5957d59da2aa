"""Small builders shared by the end-to-end tests (tiny images, tiny models, few epochs)."""

from __future__ import annotations

from pathlib import Path

from moleflow.config import Config

TINY_CLASSES = ["leather", "grid", "transistor"]


def tiny_config(data: Path, runs: Path, **overrides) -> Config:
    cfg = Config()
    settings = {
        "data_path": str(data),
        "task_classes": TINY_CLASSES,
        "img_size": [64],
        "backbone_name": "resnet18",
        "pretrained": False,
        "embed_dim": 32,
        "num_coupling_layers": 4,
        "lora_rank": 4,
        "num_epochs": 6,
        "batch_size": 8,
        "lr": 1e-3,
        "runs_dir": str(runs),
        "experiment_name": "test",
        "heatmaps": 2,
        "device": "cpu",
    }
    version = overrides.pop("version", "v3")
    from moleflow.versions import version_overrides

    for source in (version_overrides(version), settings, overrides):
        for k, v in source.items():
            cfg.set(k, v)
    cfg.run.version = version
    return cfg
