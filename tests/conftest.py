"""Shared fixtures. Tests run offline (run.sh sets HF_HUB_OFFLINE=1; set here too for direct pytest runs)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def make_distribution(root: Path, name: str, version: str, entry_points: dict[str, dict[str, str]],
                      modules: dict[str, str]) -> Path:
    """Write an installed distribution (a *.dist-info with entry_points.txt + its modules) under `root`.

    That is what pip leaves in site-packages, so importlib.metadata discovers it exactly as it would a
    real plugin once `root` is on sys.path."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for mod, src in modules.items():
        (root / f"{mod}.py").write_text(textwrap.dedent(src))
    return root


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A fake installed plugin with one working loss and one broken model."""
    root = make_distribution(
        tmp_path / "site",
        "moleflow-testplugin",
        "9.8.7",
        {
            "moleflow.losses": {"twice_nll": "mf_testplugin:TwiceNLL"},
            "moleflow.models": {"broken": "mf_testplugin_broken:Model"},
        },
        {
            "mf_testplugin": """
                class TwiceNLL:
                    reads = ("patch_score", "z")
                    def __call__(self, outputs, batch=None):
                        return 2 * (outputs["patch_score"] / outputs["z"].shape[-1]).mean()
            """,
            "mf_testplugin_broken": "raise ImportError('this plugin is broken on purpose')\n",
        },
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    for mod in ("mf_testplugin", "mf_testplugin_broken"):
        sys.modules.pop(mod, None)
    return root


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny test models gain nothing from a second thread, and on a busy 2-core machine the
    oversubscribed pool makes them ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_bench(tmp_path_factory) -> Path:
    """The embedded benchmark at 64 px with default (subtle to obvious) defects: for CLI and flag tests."""
    from moleflow.synth.benchmark import generate_benchmark

    out = tmp_path_factory.mktemp("small_bench") / "synth"
    generate_benchmark(out, size=64, n_train=8, n_test_good=4, n_test_defect=6, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory) -> Path:
    """64 px with visible defects (large, high contrast): a random-init backbone at 64 px cannot see the
    subtle ones, and the end-to-end detection test needs defects the features can carry."""
    from moleflow.testing import tiny_benchmark

    return tiny_benchmark(tmp_path_factory.mktemp("tiny_bench") / "synth", n_train=16, n_test_good=8,
                          n_test_defect=12)


@pytest.fixture(scope="session")
def tiny_tasks(tiny_bench, tmp_path_factory):
    """Features of tiny_bench computed once per session (tests build ContinualRun on them)."""
    from helpers import tiny_config
    from moleflow.continual.task_data import prepare_tasks

    cfg = tiny_config(tiny_bench, tmp_path_factory.mktemp("runs"))
    tasks, extractor, _ = prepare_tasks(cfg, torch.device("cpu"), progress=False)
    return tasks, extractor
