"""Exploration (issue 9): other per-position score definitions on trained flows (v9, v10), without retraining.

For each finished flow run folder given: restore it, take the raw patch NLL of every task's training and test
images, and score the test images under each variant (v9 z-score, v8 mean, std shrunk toward the median std,
3x3-smoothed mean/std maps, median/MAD), image score = max, mean of the top 3 patches, or max of the
3x3-smoothed map; prints mean image AUROC per run and over runs (and, for the z-score, per class).

    python benchmarks/score_variants.py runs/final11-v9/v9/<run>/ ...
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from moleflow.config import read_run_config
from moleflow.run_folder import RunFolder
from moleflow.continual.task_data import prepare_tasks
from moleflow.device import resolve_device
from moleflow.continual.trainer import ContinualRun


def smooth(m: torch.Tensor) -> torch.Tensor:
    """(h, w) map -> its 3x3 mean, replicate padding."""
    x = m[None, None]
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)[0, 0]


def variants(train: torch.Tensor, test: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, h, w) raw train / test patch NLL -> test score maps under each definition."""
    mu, sd = train.mean(0), train.std(0).clamp_min(1e-3)
    med = sd.median()
    out = {
        "v9_z": (test - mu) / sd,
        "v8_mean": test - mu,
        "shrink50": (test - mu) / torch.sqrt(0.5 * sd**2 + 0.5 * med**2),
        "shrink25": (test - mu) / torch.sqrt(0.75 * sd**2 + 0.25 * med**2),
        "smooth_musd": (test - smooth(mu)) / smooth(sd**2).sqrt(),
        "smooth_sd": (test - mu) / smooth(sd**2).sqrt(),
    }
    q = train.median(0).values
    mad = (train - q).abs().median(0).values.clamp_min(1e-3) * 1.4826
    out["robust"] = (test - q) / mad
    return out


rows: dict[str, list[float]] = {}
for folder in sys.argv[1:]:
    run = RunFolder.open(folder)
    cfg = read_run_config(run)
    dev = resolve_device("cpu")
    tasks, ex, _ = prepare_tasks(cfg, dev, progress=False)
    st = ContinualRun(cfg, tasks, ex.dim, ex.grid, dev, progress=False)
    st.restore(run, len(tasks))
    per = {}
    with torch.no_grad():
        for t in tasks:
            raw_tr = st.model(t.train_inputs, t.task_id)["patch_score"].double()
            raw_te = st.model(t.tests[0].inputs, t.task_id)["patch_score"].double()
            labels = t.tests[0].test.labels.numpy()
            for name, m in variants(raw_tr, raw_te).items():
                for agg in ("max", "top3", "smooth3"):
                    if agg == "smooth3":  # the max of the 3x3-smoothed map: favours defects larger than a patch
                        flat = torch.stack([smooth(x) for x in m]).flatten(1)
                    else:
                        flat = m.flatten(1)
                    s = flat.topk(3, 1).values.mean(1) if agg == "top3" else flat.max(1).values
                    per.setdefault(f"{name}/{agg}", []).append(roc_auc_score(labels, s.numpy()))
                    if name == "v9_z":  # per class too: where a definition helps, and where it costs
                        per.setdefault(f"{name}/{agg}/{t.name}", []).append(per[f"{name}/{agg}"][-1])
    for k, v in per.items():
        rows.setdefault(k, []).append(float(np.mean(v)))  # per class keys hold one value: the class's AUROC
    print(folder, {k: round(float(np.mean(v)), 4) for k, v in per.items() if k.endswith("/max")}, flush=True)
print()
for k, v in sorted(rows.items(), key=lambda kv: -np.mean(kv[1])):
    print(f"{k:22s} mean {np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}  per seed {[round(x, 4) for x in v]}")
