"""How hard routing is on a finished run: per class, each test image's router distance to the nearest other
task divided by its distance to its own task (1.0 = a tie; below 1 = misrouted), and the usual runner-up.

    python benchmarks/routing_margins.py runs/s11-stream15/v9/<run>    # a markdown table on stdout

Works for any run whose tasks hold one class each (1xN streams); the router is the run's own (restored from
its checkpoints), the features are recomputed from the test images with the run's backbone.
"""

from __future__ import annotations

import argparse
import collections

from moleflow.continual.task_data import build_extractor, load_datasets

from moleflow.device import resolve_device
from moleflow.continual.trainer import ContinualRun
from moleflow.features.cache import extract_features
from moleflow.config import read_run_config
from moleflow.run_folder import RunFolder


def margins(run_dir: str) -> list[tuple[str, float, float, str, float]]:
    run = RunFolder.open(run_dir)
    cfg = read_run_config(run)
    if any(len(task) != 1 for task in cfg.data.tasks):
        raise SystemExit("routing_margins: every task must hold one class (a 1xN stream)")
    device = resolve_device("cpu")
    extractor = build_extractor(cfg, device).eval()
    state = ContinualRun(cfg, [], extractor.dim, extractor.grid, device, progress=False)
    state.restore(run, len(cfg.data.tasks))
    names = [task[0] for task in cfg.data.tasks]
    rows = []
    for j, (cls, (_, test)) in enumerate(load_datasets(cfg).items()):
        pooled = extract_features(extractor, test, images_per_pass=16, device=device, progress=False).pooled
        distance = state.router.distances(pooled)
        own = distance[:, j].clone()
        distance[:, j] = float("inf")
        nearest, runner_up = distance.min(1)
        ratio = nearest / own
        usual = collections.Counter(names[i] for i in runner_up.tolist()).most_common(1)[0][0]
        rows.append((cls, float(ratio.min()), float(ratio.median()), usual, float((ratio > 1).float().mean())))
    return sorted(rows, key=lambda row: row[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run folder (1xN stream)")
    args = parser.parse_args()
    print("| class | min margin (nearest other / own distance) | median margin | usual runner-up | routed right |")
    print("|:---|---:|---:|:---|---:|")
    for cls, low, median, usual, right in margins(args.run):
        print(f"| {cls} | {low:.2f} | {median:.2f} | {usual} | {right:.3f} |")


if __name__ == "__main__":
    main()
