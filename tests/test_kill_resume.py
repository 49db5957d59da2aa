"""Kill -9 at every kind of moment, then resume: the result is the uninterrupted run's, and no run folder
ever holds a truncated file.

Each case starts a 3-task run in a fresh interpreter whose one patched function sends the process SIGKILL
at a chosen point (the patch only decides *when*; what dies is the real code path), then runs
`moleflow train --resume RUN` (or, when the kill came before the run folder existed, the same command
again) and compares metrics.json with an uninterrupted run's, timings aside. One CPU thread everywhere, so
the reference and the resumed runs round alike (see test_determinism.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_data_layer import make_mvtec_classes
from test_determinism import results

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

CLASSES = ("widget", "gadget", "gizmo")
FLAGS = ["--task_classes", *CLASSES, "--img_size", "32", "--no_pretrained", "--quiet", "--device", "cpu",
         "--heatmaps", "1", "--save_maps", "--embed_dim", "16", "--num_coupling_layers", "2", "--num_epochs", "2",
         "--batch_size", "2"]

#: where to die: python run before `moleflow train`, patching one function to SIGKILL at its N-th call
KILL_POINTS = {
    # during feature extraction (no run folder exists yet): the 3rd backbone batch
    "features": ("moleflow.features.extractor", "TimmExtractor", "forward", 3, None),
    # mid-epoch of task 0: the 3rd optimiser step (epoch 1 has 2 steps: 4 images, batch 2)
    "epoch": ("torch.nn.utils", None, "clip_grad_norm_", 3, None),
    # between tasks: right after task 0's progress.json was written
    "between": ("moleflow.run_folder", "RunFolder", "write_json", 1, "progress.json"),
    # during evaluation: scoring the 2nd class after task 1
    "evaluation": ("moleflow.evaluation.evaluator", "Evaluator", "score", 3, None),
    # during a checkpoint write: the temp file of task 1's checkpoint is written, the rename never happens
    "checkpoint": ("os", None, "replace", 1, "task_1.safetensors"),
}

DRIVER = textwrap.dedent("""
    import importlib, os, signal, sys
    module, owner, name, nth, needle, after = sys.argv[1:7]
    target = importlib.import_module(module)
    holder = getattr(target, owner) if owner != "-" else target
    real = getattr(holder, name)
    calls = []

    def dying(*args, **kwargs):
        hit = needle == "-" or any(needle in str(a) for a in args)
        if hit:
            calls.append(1)
        if hit and len(calls) == int(nth) and after == "0":
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*args, **kwargs)
        if hit and len(calls) == int(nth) and after == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(holder, name, dying)
    from moleflow.cli import main
    sys.exit(main(sys.argv[7:]))
""")


def moleflow(*argv: object, kill: tuple | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if kill is None:
        command = [sys.executable, "-m", "moleflow", *map(str, argv)]
    else:
        module, owner, name, nth, needle = kill
        after = "1" if name == "write_json" else "0"  # progress.json: die once it is safely written
        command = [sys.executable, "-c", DRIVER, module, owner or "-", name, str(nth), needle or "-", after,
                   *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def assert_no_truncated_file(folder: Path) -> None:
    """Every visible file of the run folder parses completely (hidden *.tmp files are never read)."""
    from safetensors import safe_open

    for path in folder.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]
        elif path.suffix == ".csv":
            rows = path.read_text().splitlines()
            assert rows and all(r.count(",") == rows[0].count(",") for r in rows), path
        elif path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as fh:
                [fh.get_tensor(k) for k in fh.keys()]
        elif path.suffix == ".npz":
            with np.load(path) as npz:
                [npz[k] for k in npz.files]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    data = make_mvtec_classes(root / "data", CLASSES, n_train=4)
    reference = moleflow("train", "--data_path", data, "--runs_dir", root / "reference", *FLAGS)
    assert reference.returncode == 0, reference.stderr
    (metrics,) = (root / "reference").rglob("metrics.json")
    return data, results(json.loads(metrics.read_text()))


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_then_resumed_run_equals_the_uninterrupted_one(point, setup, tmp_path):
    data, reference = setup
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    command = ["train", "--data_path", data, "--runs_dir", runs, "--feature_cache", cache, *FLAGS]
    killed = moleflow(*command, kill=KILL_POINTS[point])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folders = [p.parent for p in runs.rglob("config.json")]
    for folder in folders:
        assert_no_truncated_file(folder)
        assert not (folder / "metrics.json").exists()
    if point == "features":  # before any run folder: the same command again, on a half-filled cache
        assert not folders
        again = moleflow(*command)
    else:
        (folder,) = folders
        again = moleflow("train", "--resume", folder, "--quiet")
        if point == "epoch":
            assert "starts again from task 0" in again.stdout + again.stderr
    assert again.returncode == 0, again.stderr
    (metrics,) = runs.rglob("metrics.json")
    assert results(json.loads(metrics.read_text())) == reference
    for folder in {p.parent for p in runs.rglob("config.json")}:
        assert_no_truncated_file(folder)
        assert not list(folder.rglob(".*.tmp")), "a resumed run cleans up the temp files of killed writes"
