"""Image AUROC per defect type, from run folders' per_image.jsonl (no retraining, no model code).

    python benchmarks/defect_types.py --runs RUN_DIR... [--vs RUN_DIR...] [--markdown]

For every class and defect type (the folder under `test/` an image came from): the AUROC of that type's
images against the class's normal test images, per run, and its mean over the runs. With `--vs`, a second
group of runs (e.g. the parent version, same seeds) is put beside the first with the difference, so a change
that helps one kind of defect and hurts another shows up where the class mean would hide it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from moleflow.errors import MoleflowError
from moleflow.evaluation.metrics import image_auroc
from moleflow.run_folder import RunFolder


def defect_aurocs(run: Path) -> dict[str, float]:
    """{"class/defect": image AUROC of that defect type against the class's good test images}."""
    try:
        rows = RunFolder.open(run).read_per_image()
    except MoleflowError as exc:
        raise SystemExit(f"error: {exc}") from None
    out: dict[str, float] = {}
    for cls in sorted({r["class"] for r in rows}):
        mine = [r for r in rows if r["class"] == cls]
        good = [r["score"] for r in mine if r["ground_truth"] == 0]
        for defect in sorted({Path(r["filename"]).parent.name for r in mine if r["ground_truth"] == 1}):
            bad = [r["score"] for r in mine if r["ground_truth"] == 1 and Path(r["filename"]).parent.name == defect]
            out[f"{cls}/{defect}"] = image_auroc([0] * len(good) + [1] * len(bad), good + bad)
    return out


def mean_over(runs: list[Path]) -> dict[str, float]:
    per_run = [defect_aurocs(r) for r in runs]
    keys = per_run[0].keys()
    if any(p.keys() != keys for p in per_run):
        raise SystemExit("error: the runs do not share their classes and defect types")
    return {k: statistics.mean(p[k] for p in per_run) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="run folders (e.g. one version's seeds)")
    parser.add_argument("--vs", nargs="+", type=Path, default=None, help="run folders to compare against")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table instead of plain text")
    args = parser.parse_args(argv)
    first = mean_over(args.runs)
    other = mean_over(args.vs) if args.vs else None
    if other is not None and other.keys() != first.keys():
        raise SystemExit("error: --runs and --vs do not share their classes and defect types")
    head = ["class/defect", f"--runs ({len(args.runs)})"] + ([f"--vs ({len(args.vs)})", "difference"] if other else [])
    lines = [head]
    for key, value in first.items():
        row = [key, f"{value:.4f}"]
        if other is not None:
            row += [f"{other[key]:.4f}", f"{value - other[key]:+.4f}"]
        lines.append(row)
    if args.markdown:
        sys.stdout.write("| " + " | ".join(head) + " |\n|" + "---|" + "---:|" * (len(head) - 1) + "\n")
        sys.stdout.writelines("| " + " | ".join(row) + " |\n" for row in lines[1:])
    else:
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        sys.stdout.writelines("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n" for row in lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
