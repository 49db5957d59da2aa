"""The architecture's rules as tests (issue 25): no import cycle in moleflow/, the engine names no option of any
model, a model's options are its flags (and only its), the model is looked up once per run, FrEIA is pinned,
and a run folder written before typed model options (main at e63501a) still loads, compares and evaluates to
the numbers it recorded."""

from __future__ import annotations

import ast
import contextlib
import re
import io
import json
import shutil
from pathlib import Path

import pytest

from moleflow import registry
from moleflow.cli import main
from moleflow.config import Config, read_run_config
from moleflow.options import option_fields
from moleflow.run_folder import RunFolder
from moleflow.testing import tiny_benchmark, train_config

PACKAGE = Path(__file__).resolve().parents[1] / "moleflow"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "main-e63501a"

#: the engine: settings, the task loop, strategies, evaluation, the inert-setting check, the CLI's train flags
ENGINE = ("config.py", "inert_settings.py", "train_args.py", "continual/trainer.py", "continual/strategies.py",
          "continual/task_data.py", "evaluation/evaluator.py", "inference.py", "sweep.py", "cli.py")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks (never executed)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    return skipped


def import_graph() -> dict[str, set[str]]:
    """module -> the moleflow modules it imports, at module level or inside functions alike."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_only(tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    graph[module].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _model_options() -> dict[str, str]:
    """option name -> model, for every installed model's options class."""
    names: dict[str, str] = {}
    for model in registry.names("models"):
        for name in option_fields(registry.get("models", model).options_class):
            names.setdefault(name, model)
    return names


def _named(tree: ast.Module) -> set[str]:
    """What a module names as an attribute, a keyword argument, a whole string or a flag `--x` inside a string
    (prose in help texts, where "memory" or "score" are plain words, does not count)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            found.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
            found.update(re.findall(r"--(?:no_)?([a-z][a-z0-9_]*)", node.value))
    return found


#: words the engine uses in their own meaning that some model also chose as an option's name
ENGINE_WORDS = {
    "score": "the contract's name of a model's anomaly map (score_maps()['score'], per_image.jsonl)",
    "clamp": "torch's Tensor.clamp",
}


@pytest.mark.parametrize("module", ENGINE)
def test_the_engine_names_no_option_of_any_model(module):
    options = _model_options()
    assert {"lora_rank", "k", "experts", "token_stride", "ema_decay", "num_epochs", "loss"} <= set(options)
    named = _named(ast.parse((PACKAGE / module).read_text()))
    leaked = sorted(name for name in named & set(options) if len(name) > 1 and name not in ENGINE_WORDS)
    assert not leaked, f"{module} names options of models: " + ", ".join(f"{n} ({options[n]})" for n in leaked)


def test_a_models_help_lists_its_options_and_not_another_models():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["train", "--model", "knn", "--help"])
    text = out.getvalue()
    assert "options of model 'knn'" in text and "--memory" in text and "--k K" in text
    assert "--lora_rank" not in text and "--num_epochs" not in text and "--loss" not in text
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--lora_rank" in out.getvalue() and "--memory" not in out.getvalue()


def test_the_model_is_looked_up_once_per_run(tmp_path, monkeypatch):
    data = tiny_benchmark(tmp_path / "bench", classes=["leather"])
    cfg = train_config("--model", "knn", "--data_path", str(data), "--task_classes", "leather", "--img_size", "64",
                       "--no_pretrained", "--runs_dir", str(tmp_path / "runs"), "--heatmaps", "0", "--no_report")
    from moleflow.continual.trainer import run_training

    calls = []
    real = registry.get
    monkeypatch.setattr(registry, "get", lambda group, name: calls.append((group, name)) or real(group, name))
    run_training(cfg, progress=False, log=lambda *_: None)
    assert [c for c in calls if c[0] == "models"] == []  # resolve_config looked it up; the run reuses it


def test_freia_is_pinned():
    pins = (PACKAGE.parent / "constraints.txt").read_text().lower().split()
    assert any(p.startswith("freia==") for p in pins), pins


# --- a run folder written by main at e63501a (tests/fixtures/main-e63501a: a 2-task v10 run of a small flow,
# embed_dim 16, 2 coupling blocks, 1 epoch, at 64 px on tiny_benchmark's leather + grid; and a knn run's config)

def test_an_old_config_json_is_migrated_to_typed_options():
    flow = read_run_config(RunFolder.open(FIXTURES / "moleflow"))
    assert flow.model == "moleflow" and flow.run.version == "v10"
    assert flow.options.num_coupling_layers == 2 and flow.options.num_epochs == 1 and flow.options.token_stride == 2
    assert flow.backbone.embed_dim == 16
    knn = Config.from_dict(json.loads((FIXTURES / "knn" / "config.json").read_text()))
    assert knn.model == "knn" and knn.options.k == 2  # from the old --model_opt k=2
    assert knn.run.version == "" and knn.run_label == "knn"  # v10 is the flow's preset: knn ran on its own options
    assert knn.backbone.embed_dim == 0  # the features it ran on, as recorded
    assert "num_epochs" not in knn.flat() and "lora_rank" not in knn.flat()


def test_an_old_run_folder_compares_and_evaluates_to_its_recorded_numbers(tmp_path):
    data = tiny_benchmark(tmp_path / "bench", classes=["leather", "grid"])
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURES, runs)
    for name in ("moleflow", "knn"):
        config = json.loads((runs / name / "config.json").read_text())
        config["data"]["data_path"] = str(data)
        (runs / name / "config.json").write_text(json.dumps(config))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compare", str(runs / "moleflow"), str(runs / "knn")]) == 0
    summary = out.getvalue().split("\n\n")[1]  # the summary table: one row per run
    assert "moleflow/knn" in summary and "k=2" in summary and "num_coupling_layers=2" in summary
    recorded = json.loads((runs / "moleflow" / "metrics.json").read_text())["final"]["mean"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["eval", "--run", str(runs / "moleflow"), "--quiet"]) == 0  # checkpoints load, recipe checked
    again = json.loads((runs / "moleflow" / "metrics.json").read_text())["final"]["mean"]
    # to float round-off: the suite runs torch with another thread count than the run that wrote the fixture
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert again[key] == pytest.approx(recorded[key], abs=1e-6), key
