"""The `moleflow` command line end to end on a tiny generated benchmark.

Commands run in-process through `moleflow.cli.main` (fast); two tests start the real entry points
(`python -m moleflow`, the `moleflow` console script) in a subprocess. Settings whose effect needs no
run folder are tested in test_flags.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moleflow.cli import main

CLASSES = ["leather", "grid", "transistor"]


def without(flags: list[str], flag: str) -> list[str]:
    """`flags` minus `flag` and its value."""
    i = flags.index(flag)
    return flags[:i] + flags[i + 2:]

TINY = ["--img_size", "64", "--no_pretrained", "--embed_dim", "32", "--num_coupling_layers", "4",
        "--lora_rank", "4", "--num_epochs", "2", "--batch_size", "8", "--device", "cpu", "--quiet"]




@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        return self.out.strip().splitlines()[-1]


def cli(*args: object) -> Result:
    """`moleflow ARGS` in-process. Not capsys: the session-scoped runs below need capturing too."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


def run_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("config.json")) if root.exists() else []


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class Trained:
    root: Path
    cache: Path
    a: Result  # heatmaps 2, save_maps, feature cache filled
    b: Result  # heatmaps 0, no maps, same feature cache
    cache_after_a: dict[str, tuple[int, int]]

    @property
    def run_a(self) -> Path:
        return Path(self.a.last_line.removeprefix("run: "))

    @property
    def run_b(self) -> Path:
        return Path(self.b.last_line.removeprefix("run: "))


def cache_files(cache: Path) -> dict[str, tuple[int, int]]:
    # a cache miss rewrites the entry through os.replace: new inode, new mtime
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.rglob("*.safetensors")}


@pytest.fixture(scope="module")
def trained(small_bench, tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("cli_runs")
    cache = root / "feature_cache"
    common = ["train", "--data_path", small_bench, "--runs_dir", root / "runs", "--feature_cache", cache, *TINY]
    a = cli(*common, "--experiment_name", "exp_a", "--heatmaps", "2", "--save_maps")
    assert a.code == 0, a.err
    snapshot = cache_files(cache)
    b = cli(*common, "--experiment_name", "exp_b", "--heatmaps", "0")
    assert b.code == 0, b.err
    return Trained(root, cache, a, b, snapshot)


# ------------------------------------------------------------------------------------------ train


def test_train_prints_table_and_names_the_run_folder(trained):
    run = trained.run_a
    assert trained.a.last_line.startswith("run: ")
    assert (run / "metrics.json").is_file() and (run / "config.json").is_file()
    # --runs_dir / --experiment_name / version decide where the folder goes
    assert run.parent == trained.root / "runs" / "exp_a" / "v12"
    assert trained.run_b.parent == trained.root / "runs" / "exp_b" / "v12"
    table = {line.split()[0]: line.split()[1:] for line in trained.a.out.splitlines() if line.strip()}
    for cls in [*CLASSES, "mean"]:
        assert cls in table, f"{cls} missing from the printed table"
        # routing: all, normal, anomalous; image AUROC, pixel AUROC, AUPRO
        assert len(table[cls]) == 6 and all(0.0 <= float(v) <= 1.0 for v in table[cls])
    assert trained.a.err == ""  # --quiet: no progress bars
    # the time split: wall covers features, training and evaluation (and more: loading, checkpoints)
    timing = json.loads((run / "metrics.json").read_text())["timing"]
    assert timing["wall_s"] > timing["backbone_s"] + timing["train_s"] + timing["eval_s"] > 0


def test_heatmaps_and_save_maps_flags(trained):
    per_class = {c: sorted((trained.run_a / "heatmaps" / c).glob("*.png")) for c in CLASSES}
    assert all(len(files) == 2 for files in per_class.values()), per_class
    with Image.open(per_class["grid"][0]) as im:
        assert im.format == "PNG" and min(im.size) >= 64
    maps = np.load(trained.run_a / "maps" / "leather.npz")
    assert maps["maps"].shape == (10, 64, 64) and maps["labels"].sum() == 6
    # run b: --heatmaps 0 and no --save_maps
    assert not list((trained.run_b / "heatmaps").rglob("*.png"))
    assert not (trained.run_b / "maps").exists()


def test_feature_cache_is_filled_then_hit(trained):
    n_images = 3 * (8 + 4 + 6)
    assert len(trained.cache_after_a) == n_images
    # the second run found every entry: nothing rewritten, nothing added
    assert cache_files(trained.cache) == trained.cache_after_a
    # same data, settings and seed: the two runs report identical numbers
    metrics = [json.loads((r / "metrics.json").read_text())["final"]["per_class"]
               for r in (trained.run_a, trained.run_b)]
    assert metrics[0] == metrics[1]


# ------------------------------------------------------------------------------ eval / compare / predict


def test_eval_reproduces_the_final_metrics(trained):
    before = json.loads((trained.run_a / "metrics.json").read_text())["final"]["per_class"]
    result = cli("eval", "--run", trained.run_a, "--quiet")
    assert result.code == 0, result.err
    assert result.last_line == f"run: {trained.run_a}"
    assert json.loads((trained.run_a / "metrics.json").read_text())["final"]["per_class"] == before
    table = result.out.strip().splitlines()[:-1]
    assert "\n".join(table) in trained.a.out  # the same table `train` printed, digit for digit


def test_compare_writes_markdown_with_a_change_section(trained, tmp_path):
    target = tmp_path / "cmp.md"
    result = cli("compare", trained.run_a, trained.run_b, "--markdown", "--out", target)
    assert result.code == 0, result.err
    text = target.read_text()
    assert text.strip() == result.out.strip()
    rows = [line for line in text.splitlines() if line.startswith("|")]
    for cls in CLASSES:
        # one row per run table, one in the change table, one in each side-by-side table (image, pixel AUROC)
        assert sum(row.startswith(f"| {cls} ") for row in rows) == 5, cls
    assert "change:" in text and str(trained.run_b.name) in text
    change_rows = text[text.index("change:"):]
    assert "+0.0000" in change_rows  # identical runs: zero change


def test_predict_routes_each_image_to_its_class(trained, small_bench, tmp_path):
    images = [small_bench / "leather" / "test" / "cut" / "000.png",
              small_bench / "transistor" / "test" / "good" / "001.png"]
    out = tmp_path / "pred"
    result = cli("predict", "--run", trained.run_a, *images, "--out", out, "--quiet")
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["routed_class"] for r in rows] == ["leather", "transistor"]
    assert [r["filename"] for r in rows] == [str(p) for p in images]
    for row in rows:
        assert np.isfinite(row["score"]) and isinstance(row["anomalous"], bool)
        with Image.open(row["heatmap"]) as im:
            im.verify()
        assert Path(row["heatmap"]).parent == out / "heatmaps"
        assert np.isfinite(row["router_distance"]) and row["router_distance"] >= 0
    # the report's tile: the image at its own resolution with the map over it, routed task and distance, decision
    page = (out / "predictions.html").read_text()
    for row in rows:
        assert f'data-filename="{row["filename"]}"' in page
        assert f"task {row['routed_task']} ({row['routed_class']}), router distance" in page
        assert ("anomalous (score &gt;= T)" if row["anomalous"] else "normal (score &lt; T)") in page


def test_predict_draws_each_image_at_its_own_resolution(trained, small_bench, tmp_path):
    larger = tmp_path / "larger.png"
    with Image.open(small_bench / "leather" / "test" / "cut" / "000.png") as im:
        im.convert("RGB").resize((96, 80)).save(larger)
    out = tmp_path / "pred"
    assert cli("predict", "--run", trained.run_a, larger, "--out", out, "--quiet").code == 0
    row = json.loads((out / "predictions.jsonl").read_text())
    with Image.open(row["heatmap"]) as heat:
        assert heat.size == (96, 80)  # not the model's input size
    tiles = sorted(p.name for p in (out / "tiles").iterdir())
    assert tiles == ["0000_larger_input.jpg"]  # the map in the tile is the heatmap itself, not a second copy
    page = (out / "predictions.html").read_text()
    assert 'src="tiles/0000_larger_input.jpg"' in page and 'src="heatmaps/0000_larger.png"' in page
    with Image.open(out / "tiles" / "0000_larger_input.jpg") as im:
        assert im.size == (96, 80)


def test_joint_strategy_reports_no_bwt(trained, small_bench):
    result = cli("train", "--data_path", small_bench, "--runs_dir", trained.root / "runs", "--experiment_name", "joint",
                 "--feature_cache", trained.cache, "--task_classes", "leather", "grid", "--strategy", "joint",
                 "--heatmaps", "0", *without(TINY, "--lora_rank"))  # one plain flow: no experts to size
    assert result.code == 0, result.err
    assert "BWT (image AUROC) n/a" in result.out
    metrics = json.loads((Path(result.last_line.removeprefix("run: ")) / "metrics.json").read_text())
    assert metrics["continual"]["bwt"]["image_auroc"] is None
    assert [f["class"] for f in metrics["fit"]] == ["grid"]  # one training round, on both tasks' data


# ------------------------------------------------------------------------------------------ bad input


def _corrupt_copy(bench: Path, tmp: Path) -> tuple[Path, Path]:
    data = tmp / "corrupt"
    shutil.copytree(bench / "leather", data / "leather")
    victim = data / "leather" / "train" / "good" / "003.png"
    victim.write_bytes(b"\x89PNG not really an image" + bytes(range(200)))
    return data, victim


BAD_INPUTS = {
    # name: (extra flags, substrings the error line must contain); {bench} / {tmp} are filled in
    "missing_data_path": (["--data_path", "{tmp}/nowhere"], ["{tmp}/nowhere"]),
    "unknown_class": (["--task_classes", "leather", "carpet"], ["'carpet'", "grid, leather, transistor"]),
    "unknown_version": (["--version", "v99"], ["'v99'", "v1", "v3"]),
    "unknown_backbone": (["--backbone_name", "no_such_net"], ["'no_such_net'"]),
    "unknown_loss": (["--task_classes", "leather", "--loss", "nosuch=1"], ["loss 'nosuch'", "nll"]),
    "corrupt_image": (["--data_path", "{corrupt}", "--task_classes", "leather"], ["{victim}"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_no_run_folder(case, small_bench, tmp_path):
    flags, expected = BAD_INPUTS[case]
    corrupt, victim = _corrupt_copy(small_bench, tmp_path) if case == "corrupt_image" else (None, None)
    fill = {"bench": small_bench, "tmp": tmp_path, "corrupt": corrupt, "victim": victim}
    runs = tmp_path / "runs"
    result = cli("train", "--data_path", small_bench, "--runs_dir", runs, *TINY, *(f.format(**fill) for f in flags))
    assert result.code == 2
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for text in expected:
        assert text.format(**fill) in lines[0]
    assert run_folders(runs) == []


def test_resume_refuses_other_settings(trained):
    before = tree_bytes(trained.run_a)
    result = cli("train", "--resume", trained.run_a, "--lr", "0.1")
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("error: --resume") and result.err.rstrip().endswith("drop: --lr")
    assert len(result.err.splitlines()) == 1
    assert tree_bytes(trained.run_a) == before


def test_offline_pretrained_fails_fast_naming_the_alternatives(small_bench, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # an empty hub cache, so a machine that happens to hold resnet18's weights still takes the offline path
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # resnet18 has no registered offline weights, so it takes timm's pretrained path (efficientnet_lite0 would not)
    flags = [f for f in TINY if f != "--no_pretrained"] + ["--backbone_name", "resnet18"]
    start = time.perf_counter()
    result = cli("train", "--data_path", small_bench, "--runs_dir", tmp_path / "runs", *flags)
    elapsed = time.perf_counter() - start
    assert result.code == 2
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "--no_pretrained" in lines[0] and "--backbone_weights" in lines[0] and "resnet18" in lines[0]
    assert elapsed < 10  # the hub client alone would spend ~47 s retrying
    assert run_folders(tmp_path / "runs") == []


# ------------------------------------------------------------------------------------------ other commands


def test_synth_is_deterministic_and_contrast_changes_it(tmp_path):
    small = ["--classes", "leather", "grid", "--size", "32", "--n_train", "2", "--n_test_good", "1",
             "--n_test_defect", "3", "--seed", "5", "--quiet"]
    for name in ("a", "b"):
        result = cli("synth", "--out", tmp_path / name, *small)
        assert result.code == 0, result.err
        assert result.last_line == f"benchmark: {tmp_path / name}"
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert len([k for k in a if k.endswith(".png")]) == 2 * (2 + 1 + 3 + 3)  # images + defect masks
    assert a == b
    assert cli("synth", "--out", tmp_path / "c", *small, "--defect_contrast", "0.9", "1.0").code == 0
    c = tree_bytes(tmp_path / "c")
    assert c.keys() == a.keys()
    changed = [k for k in a if k.endswith(".png") and a[k] != c[k]]
    # only defects change: every good image (train and test) is the same
    assert changed and not [k for k in changed if "/good/" in k or "/train/" in k]


def test_synth_progress_goes_to_stderr_unless_quiet(tmp_path):
    small = ["--classes", "grid", "--size", "32", "--n_train", "1", "--n_test_good", "1", "--n_test_defect", "3"]
    assert cli("synth", "--out", tmp_path / "q", *small, "--quiet").err == ""
    assert "grid" in cli("synth", "--out", tmp_path / "p", *small).err


def test_versions_through_the_real_entry_point(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "moleflow", "versions", "--verbose"], capture_output=True,
                          text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines() if not line.startswith(" ")}
    # plugins and later versions may add presets; the three built-ins and their chain are always there
    assert list(listed)[:3] == ["v1", "v2", "v3"]
    assert (listed["v1"], listed["v2"], listed["v3"]) == ("parent=-", "parent=v1", "parent=v2")
    assert "'adapter': 'film'" in proc.stdout


def test_console_script_exits_2_with_one_error_line(tmp_path):
    script = Path(sys.executable).parent / "moleflow"
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "moleflow"]
    missing = tmp_path / "no_such_run"
    proc = subprocess.run([*launcher, "compare", str(missing)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: run folder not found: {missing}\n"


def test_plugins_lists_the_builtins():
    result = cli("plugins")
    assert result.code == 0, result.err
    rows = [line.split() for line in result.out.splitlines()[1:]]
    for group, name in [("models", "moleflow"), ("losses", "nll"), ("routers", "mahalanobis"), ("versions", "v3")]:
        assert any(r[:2] == [group, name] and r[-1] == "ok" for r in rows), (group, name)


def test_model_opt_is_a_spelling_of_the_models_own_flags_and_an_unknown_key_is_an_error(tmp_path, capsys):
    from moleflow.cli import main
    from moleflow.testing import train_config

    assert train_config("--model_opt", "lora_rank=3").options == train_config("--lora_rank", "3").options
    code = main(["train", "--data_path", str(tmp_path / "missing"), "--runs_dir", str(tmp_path / "runs"),
                 "--model_opt", "rank=3"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --rank: not an option of model 'moleflow' (its options: ")
    assert not (tmp_path / "runs").exists()
