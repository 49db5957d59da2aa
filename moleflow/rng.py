"""Reproducibility: torch's default generator seeded for one block of code and restored after it, and the
`--deterministic` switch for CUDA.

Model initialisation (LoRA A matrices, adapters, timm's random init, plugins that draw from the default
generator) must be reproducible from the run's seed, but reseeding the process-wide generator would change
what every other caller draws afterwards. `seeded_rng` forks it (CPU, and the run's CUDA device when there
is one), seeds the fork, and puts the caller's state back on exit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def deterministic_cuda() -> None:
    """`--deterministic`: CUDA kernels that give the same result every run (torch raises on an op that has
    none), cuBLAS with a fixed workspace (must be set before cuBLAS starts: run_training calls this first)
    and no cuDNN autotuning. Process-wide by nature, like the CUDA context it configures."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


@contextmanager
def seeded_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
