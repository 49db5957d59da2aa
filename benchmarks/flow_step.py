"""Time one training step of v9's flow, fused pass (flow/fused_coupling.py) against autograd through FrEIA;
with --context, v9's fused step against v10's (the same flow with the 3x3 neighbourhood context).

    python benchmarks/flow_step.py [--steps 300] [--repeats 3] [--context]

A step = what flow/fit.py does per batch: v9's shapes (152 channels, 2 images x 8x8 sub-grid = 128
patch rows, 8 blocks, LoRA rank 4, FiLM adapter without MLP), forward, backward, gradient clip, fused
AdamW. Both variants alternate within one process (machines are noisy: read the ratio, not the
milliseconds), for task 0 (base + expert trained) and task 1 (expert only, base frozen).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from moleflow.flow.model import MoLEFlow


def ms_per_step(fused: bool, task: int, steps: int, context: bool = False) -> float:
    torch.manual_seed(0)
    model = MoLEFlow(152, (16, 16), lora_rank=4, adapter_hidden=0, position_baseline=True, position_std=True,
                     fused=fused, use_cpcf=context, cpcf_fixed_context=context)
    feats = torch.randn(60, 16, 16, 152)
    for t in range(task + 1):
        model.begin_task(t, f"task{t}")
        model.observe_training_features(t, feats)
    params = model.trainable_parameters(task)
    optimizer = torch.optim.AdamW(params, lr=2e-3, fused=True)
    generator = torch.Generator().manual_seed(0)
    model.train()

    def step() -> None:
        batch = feats[torch.randint(60, (2,), generator=generator)]
        loss = model(batch, task, subgrid=(0, 1, 2))["patch_score"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()

    for _ in range(20):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--context", action="store_true", help="v9 against v10 (both fused) instead of FrEIA against fused")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    # (label, fused, context) of the two variants, alternating within one process
    variants = [("v9", True, False), ("v10", True, True)] if args.context else \
        [("FrEIA autograd", False, False), ("fused", True, False)]
    for task in (0, 1):
        times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
        for _ in range(args.repeats):
            for label, fused, context in variants:
                times[label].append(ms_per_step(fused, task, args.steps, context))
        (a, ta), (b, tb) = ((label, statistics.median(times[label])) for label, _, _ in variants)
        ratio = f"{b} costs {tb / ta:.2f}x" if args.context else f"{ta / tb:.2f}x"
        print(f"task {task}: {a} {ta:.2f} ms/step, {b} {tb:.2f} ms/step, {ratio} (median of {args.repeats})")


if __name__ == "__main__":
    main()
