"""Small builders shared by the end-to-end tests (tiny images, tiny models, few epochs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from moleflow.config import Config, resolve_config
from moleflow.options import option_fields

TINY_CLASSES = ["leather", "grid", "transistor"]


#: engine settings of the tiny end-to-end runs
TINY_SETTINGS = {
    "task_classes": TINY_CLASSES,
    "img_size": [64],
    # real features (the offline ImageNet weights of efficientnet_lite0): these tests measure detection
    "backbone_name": "efficientnet_lite0",
    "pretrained": True,
    "embed_dim": 32,
    "experiment_name": "test",
    "heatmaps": 2,
    "device": "cpu",
}
#: a tiny flow (and loop), for the models that have these options
TINY_OPTIONS = {"num_coupling_layers": 4, "lora_rank": 4, "num_epochs": 6, "batch_size": 8, "lr": 1e-3}


def tiny_config(data: Path, runs: Path, **overrides) -> Config:
    """A resolved config of a tiny run: `overrides` (settings and options by name) are checked like flags; the
    tiny model sizes are then applied to the options the model has (unchecked: a preset's size, not a request)."""
    model = overrides.pop("model", "moleflow")
    version = overrides.pop("version", "v3" if model == "moleflow" else "")
    explicit = {**TINY_SETTINGS, "data_path": str(data), "runs_dir": str(runs), "model": model, **overrides}
    if version:
        explicit["version"] = version
    cfg = resolve_config(explicit)
    known = option_fields(type(cfg.options))
    tiny = {k: v for k, v in TINY_OPTIONS.items() if k in known and k not in overrides}
    cfg.options = dataclasses.replace(cfg.options, **tiny)
    return cfg


def run_per_task_model(cfg: Config, tiny_tasks) -> dict:
    """A model whose tasks own everything (knn, discriminator) through the trainer: training task 1 leaves
    task 0's scores bitwise equal, a whole run routes perfectly with FM 0, and `moleflow eval` reproduces its
    metrics. Returns the run's final mean metrics."""
    import torch

    from moleflow.continual.trainer import ContinualRun, run_training
    from moleflow.inference import evaluate_run

    tasks, extractor = tiny_tasks
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
    state.train_task(0, None)
    before = state.model.patch_scores(tasks[0].tests[0].test.patch, 0)
    state.train_task(1, None)
    assert torch.equal(state.model.patch_scores(tasks[0].tests[0].test.patch, 0), before)

    run = run_training(cfg, progress=False, log=lambda *_: None)
    metrics = run.read_json("metrics.json")
    assert metrics["routing"]["accuracy"] == 1.0 and metrics["continual"]["fm"]["image_auroc"] == 0.0
    assert evaluate_run(run.path, progress=False).read_json("metrics.json")["final"] == metrics["final"]
    return metrics["final"]["mean"]


def train_steps(model, task: int, feats, *, steps: int, weight_decay: float = 0.0, params: list | None = None) -> None:
    """A few AdamW steps on the per-dimension NLL of `model` (a MoLEFlow) for `task`."""
    import torch

    opt = torch.optim.AdamW(params if params is not None else model.trainable_parameters(task), lr=1e-2,
                            weight_decay=weight_decay)
    for _ in range(steps):
        loss = model(feats, task)["patch_score"].mean() / feats.shape[-1]
        opt.zero_grad()
        loss.backward()
        opt.step()


# ----- components a test registers under a new name (tests/test_registry.py: "registered means used") -----

from moleflow.continual.strategies import MoLEFlowStrategy  # noqa: E402
from moleflow.features.extractor import TimmExtractor  # noqa: E402


class MarkedExtractor(TimmExtractor):
    """The timm extractor under another registered name: tells which class `--extractor` built."""


class MarkedStrategy(MoLEFlowStrategy):
    """MoLE-Flow's strategy under another registered name: tells which class `--strategy` built."""

    name = "marked"


def top_decile_recall(labels, scores) -> float:
    """A metric a plugin could register (per-class, on image scores): share of anomalous images among the
    top 10 % of scores."""
    import numpy as np

    labels, scores = np.asarray(labels), np.asarray(scores)
    top = np.argsort(-scores)[: max(1, len(scores) // 10)]
    return float(labels[top].mean())


top_decile_recall.per_class = "image"


def trained_state(cfg: Config, tiny_tasks, tasks: int):
    """A ContinualRun of `cfg` on tiny_tasks' features with its first `tasks` tasks trained."""
    import torch

    from moleflow.continual.trainer import ContinualRun

    data, extractor = tiny_tasks
    state = ContinualRun(cfg, data, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
    for t in range(tasks):
        state.train_task(t, None)
    return state


def task_scores(state, task):
    """(N,h,w) patch scores of `task`'s first test set under its own model task (no routing)."""
    import torch

    with torch.no_grad():
        return state.model.patch_scores(task.tests[0].test.patch, state.strategy.model_task(task.task_id))
