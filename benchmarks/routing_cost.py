"""What routing costs per image: each registered prototype router at T = 3 and 15 tasks, batch 1, against one
backbone forward of the default extractor (efficientnet_lite0, stages 2+3, 128 px, offline weights).

    python benchmarks/routing_cost.py            # a markdown table on stdout

Routing reads the pooled feature the backbone pass already produced (no second pass), so its cost is the
router's arithmetic: T distances in the feature width D. The routers are fitted on random features of the
extractor's width (60 images per task, as the embedded benchmark's classes have); the time does not depend
on the values. Memory is the bytes of every task's stored router state.

The no-learned-task check (moleflow.task_range) is timed beside it: an image of a learned task is measured
against the task it was routed to only; an image of no learned task against every task (that is how it is
found to be beyond all of them).
"""

from __future__ import annotations

import time

import torch

from moleflow import registry
from moleflow.testing import train_config

ROUTERS = ("lda", "mahalanobis", "euclidean")
TASKS = (3, 15)


def best_ms(fn, repeats: int = 200, rounds: int = 5) -> float:
    """Best over `rounds` of the mean over `repeats` calls, in milliseconds (machines are noisy)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats * 1e3)
    return best


def backbone_ms() -> tuple[float, int, tuple[int, int]]:
    from moleflow.continual.task_data import build_extractor

    cfg = train_config("--data_path", "data/synth")
    extractor = build_extractor(cfg, torch.device("cpu")).eval()
    image = torch.rand(1, 3, *cfg.data.size)
    with torch.no_grad():
        return best_ms(lambda: extractor(image), repeats=20), extractor.dim, extractor.grid


def task_range_rows(dim: int, grid: tuple[int, int], backbone: float) -> list[tuple]:
    """(tasks, ms for an image of a learned task, ms for one of no learned task, % of a backbone forward for
    each, KiB per task) of the default check."""
    from moleflow.task_range import TaskRange

    cfg = train_config("--data_path", "data/synth")
    g = torch.Generator().manual_seed(0)
    rows = []
    for tasks in TASKS:
        check = TaskRange(cfg.train.task_range_memory, cfg.eval.task_range_margin)
        for t in range(tasks):
            check.add_task(t, torch.randn(60, *grid, dim, generator=g) + 3 * t, seed=t)
        learned, unlearned = torch.randn(1, *grid, dim, generator=g), torch.randn(1, *grid, dim, generator=g) - 50
        routed = torch.zeros(1, dtype=torch.long)
        assert not check.check(learned, routed).no_learned_task[0] and check.check(unlearned, routed).no_learned_task[0]
        one = best_ms(lambda: check.check(learned, routed), repeats=20)
        every = best_ms(lambda: check.check(unlearned, routed), repeats=5)
        rows.append((tasks, one, every, 100 * one / backbone, 100 * every / backbone, check.task_bytes(0) / 1024))
    return rows


def main() -> None:
    backbone, dim, grid = backbone_ms()
    g = torch.Generator().manual_seed(0)
    rows = []
    for name in ROUTERS:
        for tasks in TASKS:
            router = registry.create("routers", name)
            for t in range(tasks):
                router.add_task(t, torch.randn(60, dim, generator=g) + t)
            query = torch.randn(1, dim, generator=g)
            ms = best_ms(lambda: router.predict(query))
            state = sum(v.numel() * v.element_size() for t in range(tasks) for v in router.task_state(t).values())
            rows.append((name, tasks, ms, 100 * ms / backbone, state / tasks / 1024))
    print(f"one backbone forward (batch 1, {torch.get_num_threads()} threads): {backbone:.2f} ms; feature width {dim}\n")
    print("| router | tasks | routing ms / image | % of one backbone forward | state KiB per task |")
    print("|---|---:|---:|---:|---:|")
    for name, tasks, ms, share, kib in rows:
        print(f"| {name} | {tasks} | {ms:.3f} | {share:.1f} % | {kib:.0f} |")
    print(f"\nno-learned-task check ({grid[0]}x{grid[1]} patches per image, defaults)\n")
    print("| tasks | image of a learned task: ms (% of backbone) | image of no learned task: ms (%) "
          "| state KiB per task |")
    print("|---:|---:|---:|---:|")
    for tasks, one, every, one_share, every_share, kib in task_range_rows(dim, grid, backbone):
        print(f"| {tasks} | {one:.2f} ({one_share:.0f} %) | {every:.2f} ({every_share:.0f} %) | {kib:.0f} |")


if __name__ == "__main__":
    main()
