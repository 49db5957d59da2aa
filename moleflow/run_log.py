"""What a run records besides its files (those are `moleflow.run_folder`): the environment record (env.json:
versions, git state, machine) and the TensorBoard logger.

TensorBoard event files go wherever TBLogger is pointed; the trainer uses `<run>/tb/`, so
`tensorboard --logdir runs/` lists every run (HPARAMS tab: each run's config beside its final metrics).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

import moleflow
from moleflow.run_folder import to_jsonable



# ----------------------------------------------------------------------------------------- environment

def _package_version(name: str) -> str:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})  # read-only: no index refresh
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(source_dir: str | Path | None = None) -> dict[str, Any]:
    """SHA of HEAD for the moleflow source tree and whether its files differ from it ("unknown"/None if no git)."""
    pkg = Path(source_dir) if source_dir else Path(__file__).resolve().parent
    sha = _git(["rev-parse", "HEAD"], pkg)
    if not sha:
        return {"git_sha": "unknown", "git_dirty": None}
    status = _git(["status", "--porcelain", "--", "."], pkg)  # scoped to the package directory
    return {"git_sha": sha, "git_dirty": None if status is None else bool(status)}


def collect_env(seed: int, device: str) -> dict:
    """Library versions, git state, device and seed; nothing that identifies the machine (no hostname/user)."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "moleflow": moleflow.__version__,
        "torch": torch.__version__,
        **{name: _package_version(dist) for name, dist in
           (("torchvision", "torchvision"), ("timm", "timm"), ("FrEIA", "FrEIA"), ("numpy", "numpy"),
            ("safetensors", "safetensors"))},
        **git_state(),
        "device": str(device),
        "seed": int(seed),
        "torch_threads": torch.get_num_threads(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


# ----------------------------------------------------------------------------------------- tensorboard

class TBLogger:
    """Thin wrapper over SummaryWriter. Calls after close() are ignored, so cleanup order never matters."""

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer: Any = SummaryWriter(log_dir=str(self.log_dir))

    def scalar(self, tag: str, value: Any, step: int) -> None:
        """One point; an undefined value (None or NaN: e.g. pixel metrics of a data set without masks) is left
        out, so TensorBoard shows no point rather than a NaN one."""
        if self._writer is None or value is None or not math.isfinite(float(value)):
            return
        self._writer.add_scalar(tag, float(value), int(step))

    def image(self, tag: str, hwc_uint8: np.ndarray, step: int) -> None:
        if self._writer is None:
            return
        self._writer.add_image(tag, np.asarray(hwc_uint8), int(step), dataformats="HWC")

    def hparams(self, flat_config: dict, final_metrics: dict) -> None:
        """One HPARAMS-tab row: this run's config beside its final metrics (NaN/None metrics dropped)."""
        if self._writer is None:
            return
        hp = {k: _hparam_value(v) for k, v in _flatten(flat_config).items()}
        metrics = {k: float(v) for k, v in _flatten(final_metrics).items()
                   if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(float(v))}
        # run_name="." keeps the hparams event in this run's own folder instead of a timestamped sub-run.
        self._writer.add_hparams(hp, metrics, run_name=".")
        self._writer.flush()

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}/"))
        else:
            out[key] = v
    return out


def _hparam_value(v: Any) -> str | int | float:
    v = to_jsonable(v)
    if isinstance(v, bool):  # torch's add_hparams would file a bool as the number 0/1
        return str(v).lower()
    if isinstance(v, (int, float, str)):
        return v
    if v is None:
        return "none"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)
