"""What routing costs per image: each registered prototype router at T = 3 and 15 tasks, batch 1, against one
backbone forward of the default extractor (efficientnet_lite0, stages 2+3, 128 px, offline weights).

    python benchmarks/routing_cost.py            # a markdown table on stdout

Routing reads the pooled feature the backbone pass already produced (no second pass), so its cost is the
router's arithmetic: T distances in the feature width D. The routers are fitted on random features of the
extractor's width (60 images per task, as the embedded benchmark's classes have); the time does not depend
on the values. Memory is the bytes of every task's stored router state.
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


def backbone_ms() -> tuple[float, int]:
    from moleflow.continual.task_data import build_extractor

    cfg = train_config("--data_path", "data/synth")
    extractor = build_extractor(cfg, torch.device("cpu")).eval()
    image = torch.rand(1, 3, *cfg.data.size)
    with torch.no_grad():
        return best_ms(lambda: extractor(image), repeats=20), extractor.dim


def main() -> None:
    backbone, dim = backbone_ms()
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


if __name__ == "__main__":
    main()
