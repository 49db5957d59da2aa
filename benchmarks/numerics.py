"""Numerical guard: are z and log|det J| finite for every patch of every finished flow run under RUNS?

For each run folder (any version, any seed) the script rebuilds the model from its checkpoints, passes every
training and test image of every task through its own expert, and reports per run: non-finite entries of z
and of log|det J|, the largest |z| and the range of log|det J| per patch. It writes a markdown table (and the
same rows as JSON) so the numbers in UPDATE_NOTES.md come from run folders.

    python benchmarks/numerics.py runs/numerics --out runs/numerics/NUMERICS.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch


def check_run(folder: Path, feature_cache: str) -> dict:
    from moleflow.continual.task_data import prepare_tasks
    from moleflow.device import resolve_device
    from moleflow.continual.trainer import ContinualRun
    from moleflow.config import read_run_config
    from moleflow.run_folder import RunFolder

    run = RunFolder.open(folder)
    cfg = read_run_config(run)
    cfg.backbone.feature_cache = feature_cache  # runs of one recipe share their backbone features
    device = resolve_device("cpu")
    tasks, extractor, _ = prepare_tasks(cfg, device, progress=False)
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, device, progress=False)
    state.restore(run, len(tasks))
    bad_z = bad_logdet = 0
    max_z, lo, hi = 0.0, math.inf, -math.inf
    with torch.no_grad():
        for task in tasks:
            model_task = state.strategy.model_task(task.task_id)
            for feats in (task.train_inputs, task.tests[0].inputs):
                out = state.model(feats, model_task)
                z, logdet = out["z"], out["log_jac_det"]
                bad_z += int((~torch.isfinite(z)).sum())
                bad_logdet += int((~torch.isfinite(logdet)).sum())
                finite = logdet[torch.isfinite(logdet)]
                max_z = max(max_z, float(z[torch.isfinite(z)].abs().max()))
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    return {"run": str(folder), "version": cfg.run.version, "seed": cfg.train.seed, "nonfinite_z": bad_z,
            "nonfinite_logdet": bad_logdet, "max_abs_z": max_z, "logdet_min": lo, "logdet_max": hi}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="a folder holding finished moleflow (flow) run folders")
    parser.add_argument("--out", required=True, help="markdown table to write; the JSON goes beside it")
    parser.add_argument("--feature_cache", default=".numerics-cache", help="backbone feature cache shared by the runs")
    args = parser.parse_args(argv)
    folders = sorted(p.parent for p in Path(args.runs).rglob("metrics.json"))
    out = Path(args.out)
    # a second call on a folder that has grown checks only the new runs
    rows = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else []
    done = {r["run"] for r in rows}
    rows += [check_run(folder, args.feature_cache) for folder in folders if str(folder) not in done]
    rows.sort(key=lambda r: (r["version"], r["seed"]))
    lines = ["| version | seed | non-finite z | non-finite log\\|det J\\| | max \\|z\\| | log\\|det J\\| range |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['version']} | {r['seed']} | {r['nonfinite_z']} | {r['nonfinite_logdet']} | {r['max_abs_z']:.1f} "
              f"| [{r['logdet_min']:.1f}, {r['logdet_max']:.1f}] |" for r in rows]
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    return 0 if all(r["nonfinite_z"] == 0 and r["nonfinite_logdet"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
