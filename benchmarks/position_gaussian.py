"""Diagnostic (issue 23): PaDiM's model, a Gaussian per grid position, on a finished run's own features.

    python benchmarks/position_gaussian.py RUN_DIR      # per-class image / pixel AUROC / AUPRO, markdown

For every task of the run: the backbone features the run used (its extractor settings), a Ledoit-Wolf
Gaussian per grid position over the task's training images, each test patch scored by its Mahalanobis
distance to its position's Gaussian, the map upsampled and blurred as moleflow does (the run's
--blur_sigma), the image score the map's maximum. Nothing is trained; it says how far a per-position model of
the same features goes, beside the run's own numbers (`moleflow compare RUN_DIR`). Measured on the 1x15 v12
run of `runs/f29-s15` (seed 0): mean 0.7953 / 0.8551 / 0.5228 against v12's 0.7562 / 0.8840 / 0.5674 and
anomalib's PaDiM 0.8232 / 0.8852 / 0.6009 (UPDATE_NOTES.md, issue 23's note).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from moleflow.continual.task_data import prepare_tasks
from moleflow.device import resolve_device
from moleflow.evaluation import metrics as M
from moleflow.evaluation.maps import anomaly_maps
from moleflow.inference import _open_finished


def position_scores(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """(N,h,w) Mahalanobis distances of `test` (N,h,w,D) to a Gaussian per position of `train` (M,h,w,D)."""
    _, h, w, _ = train.shape
    scores = torch.zeros(test.shape[:3], dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            lw = LedoitWolf().fit(train[:, i, j].double().numpy())
            precision = torch.from_numpy(np.linalg.inv(lw.covariance_))
            diff = test[:, i, j].double() - torch.from_numpy(lw.location_)
            scores[:, i, j] = ((diff @ precision) * diff).sum(-1).clamp_min(0).sqrt()
    return scores


def main(run_dir: str) -> None:
    _, cfg = _open_finished(run_dir)
    tasks, _, _ = prepare_tasks(cfg, resolve_device("cpu"), False)
    rows = []
    for task in tasks:
        for test in task.tests:
            maps = anomaly_maps(position_scores(task.train.patch, test.test.patch).float(), cfg.data.size,
                                cfg.eval.blur_sigma)
            masks = test.test.masks[:, 0].numpy().astype(bool)
            rows.append((test.class_name, M.image_auroc(test.test.labels.numpy(), maps.amax(dim=(1, 2)).numpy()),
                         M.pixel_auroc(masks, maps.numpy()), M.aupro(masks, maps.numpy())))
    print("| class | image AUROC | pixel AUROC | AUPRO |\n|---|---:|---:|---:|")
    for name, *values in rows + [("mean", *np.nanmean([r[1:] for r in rows], axis=0))]:
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/position_gaussian.py RUN_DIR")
    main(sys.argv[1])
