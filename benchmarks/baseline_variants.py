"""Re-score finished flow runs under other position baselines (v12's choice, UPDATE_NOTES.md).

    python benchmarks/baseline_variants.py --group 1x15 RUN RUN --group demo RUN ... [--per_class RUN]

A position baseline is fitted after a task trains and never changes what it learns, so re-scoring a run's
checkpoints with another baseline gives exactly what a run with that baseline prints. For each run the
model is rebuilt from its checkpoints, every task's raw patch NLL is computed on its training and test
features, each variant's baseline is fitted on the training NLL and applied to the test NLL, and the usual
image AUROC (max of the patch scores), pixel AUROC and AUPRO (of the blurred, upsampled maps) are computed
per class. The table shows, per group, the mean over its runs of the mean over classes; --per_class prints
one run's classes.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from moleflow.evaluation.maps import anomaly_maps
from moleflow.evaluation.metrics import aupro, image_auroc, pixel_auroc
from moleflow.flow.score_baseline import PositionBaseline
from moleflow.inference import restored_run

#: name -> PositionBaseline arguments (None: the raw NLL)
VARIANTS = {
    "raw NLL (no baseline)": None,
    "per position, z-score (v9-v11)": dict(scale=True),
    "per position, mean (v8)": dict(),
    "border ring 2 own, interior one plane (v12)": dict(interior="plane", border=2),
    "border ring 1 own, interior one plane": dict(interior="plane", border=1),
    "the whole grid one plane": dict(interior="plane", border=0),
    "v12 with z-scores (border: own std; interior: pooled)": dict(interior="plane", border=2, scale=True),
}


def rescore(run_dir: str) -> dict[str, dict[str, tuple[float, float, float]]]:
    """variant -> class -> (image AUROC, pixel AUROC, AUPRO) of one finished run."""
    _, state, _ = restored_run(run_dir, progress=False)
    cfg, tasks, model = state.cfg, state.tasks, state.model.eval()

    @torch.no_grad()
    def raw(feats: torch.Tensor, task: int) -> torch.Tensor:
        return torch.cat([model(chunk.to(state.device), task)["patch_score"].cpu() for chunk in feats.split(16)]).double()

    out: dict[str, dict[str, tuple[float, float, float]]] = {name: {} for name in VARIANTS}
    for task in tasks:
        model_task = state.strategy.model_task(task.task_id)
        train = raw(task.train.patch, model_task)
        for test in task.tests:
            scores = raw(test.test.patch, model_task)
            masks = test.test.masks[:, 0].numpy()
            for name, spec in VARIANTS.items():
                if spec is None:
                    calibrated = scores
                else:
                    baseline = PositionBaseline(tuple(train.shape[1:]), **spec).double()
                    baseline.fit(train)
                    calibrated = baseline(scores)
                maps = anomaly_maps(calibrated.float(), cfg.data.size, cfg.eval.blur_sigma).numpy()
                out[name][test.class_name] = (image_auroc(test.test.labels.numpy(), calibrated.flatten(1).amax(1).numpy()),
                                              pixel_auroc(masks, maps), aupro(masks, maps))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", nargs="+", action="append", metavar=("NAME", "RUN"), default=[],
                        help="a column: its name, then run folders (their means are averaged)")
    parser.add_argument("--per_class", default=None, help="also print this run's classes")
    args = parser.parse_args()
    columns = []
    for name, *runs in args.group:
        per_run = [rescore(r) for r in runs]
        columns.append((f"{name} ({len(runs)} run{'s' if len(runs) > 1 else ''})", {
            v: np.mean([[np.mean([c[i] for c in r[v].values()]) for i in range(3)] for r in per_run], axis=0)
            for v in VARIANTS}))
    print("| baseline | " + " | ".join(title for title, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for v in VARIANTS:
        print(f"| {v} | " + " | ".join("{:.4f} / {:.4f} / {:.4f}".format(*values[v]) for _, values in columns) + " |")
    print("\n(each cell: mean image AUROC / mean pixel AUROC / mean AUPRO)")
    if args.per_class:
        one = rescore(args.per_class)
        print(f"\nper class of {args.per_class} (image / pixel AUROC / AUPRO)\n")
        print("| class | " + " | ".join(VARIANTS) + " |")
        print("|---|" + "---|" * len(VARIANTS))
        for c in next(iter(one.values())):
            print(f"| {c} | " + " | ".join("{:.3f} / {:.3f} / {:.3f}".format(*one[v][c]) for v in VARIANTS) + " |")


if __name__ == "__main__":
    main()
