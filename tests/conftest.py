"""Shared fixtures. Tests run offline (run.sh sets HF_HUB_OFFLINE=1; set here too for direct pytest runs)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

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
