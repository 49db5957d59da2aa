"""Determinism on CPU: the same command and seed give the same metrics.json, timings aside, for every
registered version preset and every registered model (the plugins' included). Tiny runs (32 px, random-init
backbone, two tasks, one epoch), each run twice in this process; one also in a fresh interpreter, so nothing
in the process (a generator drawn from earlier, a hash seed) leaks into a result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_data_layer import make_mvtec_classes

from moleflow import registry
from moleflow.testing import train_config

BASE = ["--task_classes", "widget", "gadget", "--img_size", "32", "--no_pretrained", "--quiet", "--device", "cpu",
        "--heatmaps", "0"]
FLOW = ["--embed_dim", "16", "--num_coupling_layers", "2", "--num_epochs", "1", "--batch_size", "4"]
#: the smallest training each model reads (a flag a model does not read is refused, so each gets its own)
MODEL_FLAGS = {"moleflow": FLOW, "knn": [], "pixel_gauss": [], "firm": ["--num_epochs", "1"],
               "discriminator": ["--num_epochs", "1", "--batch_size", "4"],
               "ae": ["--num_epochs", "1", "--batch_size", "4"],
               # its teacher distils 5000 steps by default: the students plugin's own test sizes
               "students": ["--num_epochs", "1", "--batch_size", "4", "--model_opt", "students=2", "width=8",
                            "descriptor_dim=16", "descriptor_size=32", "teacher_patches=128", "teacher_steps=15",
                            "teacher_batch=16"],
               # plugins/moleflow-anomalib (PatchCore's coreset also draws from numpy: forked per fit)
               "anomalib_patchcore": [], "anomalib_padim": ["--n_features", "16"],
               "anomalib_dfm": ["--pooling_kernel_size", "1"],  # its default 4 is larger than these tiny maps
               "anomalib_fastflow": ["--backbone_name", "resnet18", "--no_pretrained", "--num_epochs", "1",
                                     "--flow_steps", "1"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_mvtec_classes(tmp_path_factory.mktemp("determinism") / "data", ("widget", "gadget"), n_train=4)


def results(metrics: dict) -> dict:
    """metrics.json without what a clock measures (timing, seconds per task)."""
    kept = {k: v for k, v in metrics.items() if k != "timing"}
    kept["fit"] = [{k: v for k, v in row.items() if k != "seconds"} for row in metrics.get("fit", [])]
    return kept


def train_twice(data: Path, runs: Path, flags: list[str]) -> tuple[dict, dict]:
    from moleflow.continual.trainer import run_training

    argv = ["--data_path", str(data), "--runs_dir", str(runs), *BASE, *flags]
    first, second = (results(run_training(train_config(*argv), progress=False, log=lambda *_: None)
                             .read_json("metrics.json")) for _ in range(2))
    return first, second


@pytest.mark.parametrize("version", registry.names("versions"))
def test_every_version_gives_the_same_metrics_twice(version, data, tmp_path):
    first, second = train_twice(data, tmp_path, ["--version", version, *FLOW])
    assert first == second


@pytest.mark.parametrize("model", registry.names("models"))
def test_every_model_gives_the_same_metrics_twice(model, data, tmp_path):
    if model not in MODEL_FLAGS:
        pytest.fail(f"model '{model}' is registered but this test does not know its smallest training flags; "
                    "add it to MODEL_FLAGS")
    first, second = train_twice(data, tmp_path, ["--model", model, *MODEL_FLAGS[model]])
    assert first == second


def test_a_fresh_interpreter_gives_the_same_metrics(data, tmp_path):
    from moleflow.continual.trainer import run_training

    argv = ["--data_path", str(data), "--runs_dir", str(tmp_path / "here"), *BASE, *FLOW]
    here = results(run_training(train_config(*argv), progress=False, log=lambda *_: None).read_json("metrics.json"))
    there_runs = tmp_path / "there"
    # the same number of CPU threads: torch splits its reductions by thread, so another count rounds otherwise
    threads = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    subprocess.run([sys.executable, "-m", "moleflow", "train", "--data_path", str(data), "--runs_dir",
                    str(there_runs), *BASE, *FLOW], check=True, capture_output=True, timeout=600, env=env)
    (metrics,) = there_runs.rglob("metrics.json")
    assert results(json.loads(metrics.read_text())) == here


def test_deterministic_is_refused_on_cpu_and_sets_torchs_switches_for_cuda(monkeypatch):
    from moleflow.errors import MoleflowError
    from moleflow.rng import deterministic_cuda

    with pytest.raises(MoleflowError, match="--deterministic changes nothing unless the run uses CUDA"):
        train_config("--data_path", "x", "--device", "cpu", "--deterministic")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    try:
        deterministic_cuda()
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert torch.backends.cudnn.deterministic and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
