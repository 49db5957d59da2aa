"""Per-task growth vs mean image AUROC, from run folders: the cost/quality trade-off of a continual model.

    python benchmarks/growth_curve.py RUN_DIR_OR_FOLDER... --out docs/growth_curve.png [--reference RUN...]

Each run is a point: x = the parameters a task adds, as a percentage of the shared ones (the run's
metrics.json `params`), y = its mean image AUROC; runs with the same label (version + the settings it changes
off its preset + strategy) are averaged, with the seeds' standard deviation as an error bar. `--reference`
runs (e.g. `--model knn`, `--strategy separate`) are drawn as horizontal lines: a memory has no shared part,
and the no-sharing ceiling grows by a whole model per task. Prints the points as a markdown table too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from moleflow.errors import MoleflowError
from moleflow.run_summary import RunSummary, expand_run_dirs, load_summary


def label(run: RunSummary) -> str:
    off = {k: v for k, v in (run.off_preset or {}).items() if k not in ("seed", "task_classes", "scenario", "strategy")}
    settings = " ".join(f"{k}={v}" for k, v in sorted(off.items()))
    name = run.version if run.strategy == "moleflow" else f"{run.version} {run.strategy}"
    return f"{name} {settings}".strip()


def grouped(paths: list[str]) -> dict[str, list[RunSummary]]:
    runs, _ = expand_run_dirs(paths)
    groups: dict[str, list[RunSummary]] = defaultdict(list)
    for path in runs:
        run = load_summary(path)
        if run.off_preset is None:  # its config.json does not read against today's options: label unknown
            print(f"skipped {path}: its settings do not read against today's options", file=sys.stderr)
            continue
        groups[label(run)].append(run)
    return dict(groups)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders (or folders holding runs) of the continual model")
    p.add_argument("--reference", nargs="*", default=[], help="runs drawn as horizontal lines (knn, separate)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--title", default="growth per task vs mean image AUROC")
    args = p.parse_args(argv)
    try:
        points, references = grouped(args.runs), grouped(args.reference)
    except MoleflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("| run | seeds | growth per task | mean image AUROC |\n|---|---:|---:|---:|")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, runs in sorted(points.items(), key=lambda item: item[1][0].growth_per_task or 0):
        growth = 100 * statistics.fmean(r.growth_per_task or 0 for r in runs)
        auroc, spread = mean_std([r.mean["image_auroc"] for r in runs])
        ax.errorbar(growth, auroc, yerr=spread, fmt="o", capsize=3)
        ax.annotate(name, (growth, auroc), textcoords="offset points", xytext=(5, 4), fontsize=7)
        print(f"| {name} | {len(runs)} | {growth:.1f} % | {auroc:.4f} ± {spread:.4f} |")
    for index, (name, runs) in enumerate(sorted(references.items())):
        auroc, spread = mean_std([r.mean["image_auroc"] for r in runs])
        ax.axhline(auroc, linestyle="--", color=f"C{index + 5}", label=f"{name}: {auroc:.4f}")
        print(f"| {name} (reference) | {len(runs)} | - | {auroc:.4f} ± {spread:.4f} |")
    ax.set_xlabel("parameters added per task (% of the shared flow)")
    ax.set_ylabel("mean image AUROC")
    ax.set_title(args.title, fontsize=10)
    if references:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
