"""`moleflow sweep`: trial expansion, flags refused before any trial starts, and real sweeps on a tiny
benchmark (each trial a `python -m moleflow train` subprocess), locally and on a local Ray instance."""

from __future__ import annotations

import contextlib
import io
import subprocess
import time
from pathlib import Path

import pytest

from moleflow import sweep
from moleflow.cli import main
from moleflow.errors import MoleflowError

# 32 px, random-init backbone, one epoch, no heatmaps: a trial is mostly the subprocess's imports
TINY = ["--img_size", "32", "--no_pretrained", "--embed_dim", "16", "--num_coupling_layers", "2", "--lora_rank", "2",
        "--num_epochs", "1", "--batch_size", "4", "--heatmaps", "0", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    from moleflow.testing import tiny_benchmark

    return tiny_benchmark(tmp_path_factory.mktemp("sweep_bench") / "synth", classes=["leather", "grid"], size=32,
                          n_train=4, n_test_good=2, n_test_defect=2)


@pytest.fixture(scope="module")
def warm() -> None:
    """The train parser with the flow's options, built once: its imports (torch, the model) are not what the
    timing below measures."""
    from moleflow.train_args import train_parser

    train_parser([])


def sweep_cli(*args: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["sweep", *(str(a) for a in args)])
    return code, out.getvalue(), err.getvalue()


def train_flags(bench: Path, runs: Path, *extra: str) -> list[str]:
    return ["--data_path", str(bench), "--runs_dir", str(runs), "--experiment_name", "exp", *TINY, *extra]


def run_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("config.json")) if root.exists() else []


def test_trials_are_versions_x_seeds_x_orders_with_exact_argv():
    trials = sweep.expand_trials(["v9", "v3"], [0, 1], ["leather,grid", "grid,leather"], ["--num_epochs", "2"])
    assert [t.argv for t in trials[:3]] == [
        ["train", "--version", "v9", "--seed", "0", "--task_classes", "leather", "grid", "--num_epochs", "2"],
        ["train", "--version", "v9", "--seed", "0", "--task_classes", "grid", "leather", "--num_epochs", "2"],
        ["train", "--version", "v9", "--seed", "1", "--task_classes", "leather", "grid", "--num_epochs", "2"],
    ]
    assert [t.name for t in trials] == [f"{v}-seed{s}-{o}" for v in ("v9", "v3") for s in (0, 1)
                                        for o in ("leather+grid", "grid+leather")]
    # no --task_orders: the train flags' own --task_classes (or the default) for every trial
    assert [t.argv for t in sweep.expand_trials(["v9"], [3, 4], None, ["--quiet"])] == [
        ["train", "--version", "v9", "--seed", "3", "--quiet"], ["train", "--version", "v9", "--seed", "4", "--quiet"]]
    with pytest.raises(MoleflowError, match="listed twice: v9-seed1"):
        sweep.expand_trials(["v9"], [1, 1], None, [])
    with pytest.raises(MoleflowError, match="comma-separated"):
        sweep.expand_trials(["v9"], [1], ["leather,,grid"], [])


def test_without_versions_each_trial_runs_the_models_default_and_is_named_after_it(bench, tmp_path):
    """A model without presets (knn) is swept without --versions: its trials carry no --version and are named
    <model>-seed<S>; the flow without --versions gets its default preset's name. Resolved, not run."""
    import argparse

    runs = tmp_path / "runs"
    for model, label in (("knn", "knn"), ("moleflow", "v12")):
        flags = ["--data_path", str(bench), "--runs_dir", str(runs), "--model", model]
        trials = sweep.expand_trials(None, [0, 1], None, flags)
        assert [t.argv[:3] for t in trials] == [["train", "--seed", "0"], ["train", "--seed", "1"]]
        args = argparse.Namespace(backend="local", ray_address=None, gpus_per_trial=None, cpus_per_trial=None,
                                  max_parallel=None, task_orders=None, train_flags=flags)
        sweep.check_flags(args, trials)
        assert [t.name for t in trials] == [f"{label}-seed0", f"{label}-seed1"]
        assert trials[0].log.name == f"{label}-seed0.log"


@pytest.mark.parametrize("sweep_flags, extra, message", [
    ([], ["--num_epohcs", "2"], "error: train flags: --num_epohcs: not a setting, nor an option of model 'moleflow'"),
    ([], ["--num_epochs", "0"], "error: trial v9-seed0: --num_epochs 0: must be >= 1"),
    ([], ["--seed", "3"], "error: --seed in the train flags: the sweep sets it per trial; use --seeds"),
    (["--gpus_per_trial", "1"], [], "error: --gpus_per_trial: only read with --backend ray"),
    (["--ray_address", "head:6379"], [], "error: --ray_address: only read with --backend ray"),
    (["--backend", "ray", "--gpus_per_trial", "1"], [], "error: --gpus_per_trial 1 with --device cpu"),
])
def test_bad_flags_are_one_error_line_before_any_trial(sweep_flags, extra, message, bench, tmp_path, monkeypatch,
                                                      warm):
    def no_trial(*args, **kwargs):
        raise AssertionError("a trial was started")

    monkeypatch.setattr(sweep, "run_trial", no_trial)
    start = time.monotonic()
    code, out, err = sweep_cli("--versions", "v9", "--seeds", "0", "1", *sweep_flags, "--",
                               *train_flags(bench, tmp_path / "runs", *extra))
    assert time.monotonic() - start < 3  # in-process checks (~0.3 s): no subprocess, no Ray
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(message), err
    assert not (tmp_path / "runs").exists()


def test_train_flags_before_the_separator_are_explained(bench, tmp_path):
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["sweep", "--versions", "v9", "--seeds", "0", "--data_path", str(bench)])
    assert exc.value.code == 2 and "flags go after `--`" in err.getvalue().splitlines()[-1]


def test_a_second_sweep_into_the_same_experiment_keeps_the_first_sweeps_logs(tmp_path):
    """`./run.sh sweep` runs each ablation row as its own `moleflow sweep` of trial v10-seed0 into one
    experiment folder: each must get its own log instead of overwriting the last one."""
    logs = tmp_path / "sweep-logs"
    assert sweep._unused_log_path(logs, "v10-seed0") == (logs / "v10-seed0.log").absolute()
    logs.mkdir()
    (logs / "v10-seed0.log").write_text("first")
    assert sweep._unused_log_path(logs, "v10-seed0").name == "v10-seed0-2.log"
    (logs / "v10-seed0-2.log").write_text("second")
    assert sweep._unused_log_path(logs, "v10-seed0").name == "v10-seed0-3.log"
    assert sweep._unused_log_path(logs, "v9-seed0").name == "v9-seed0.log"


def test_local_sweep_reports_a_failed_trial_and_finishes_the_others(bench, tmp_path):
    runs = tmp_path / "runs"
    code, out, _ = sweep_cli("--versions", "v9", "--seeds", "0", "--task_orders", "leather", "leather,missing", "grid",
                             "--max_parallel", "3", "--", *train_flags(bench, runs))
    assert code == 1, out
    # the failure: its name, exit code and the last lines of its log (the trial's own one-line error)
    failed = next(line for line in out.splitlines() if "FAILED" in line)
    assert "v9-seed0-leather+missing" in failed and "exit 2" in failed
    assert any(line.startswith("    | error:") and "missing" in line for line in out.splitlines()), out
    assert (runs / "exp" / "sweep-logs" / "v9-seed0-leather+missing.log").is_file()
    # the others finished: 2 run folders, the summary table, COMPARE.md over both
    folders = run_folders(runs)
    assert len(folders) == 2 and all((f / "metrics.json").is_file() for f in folders)
    table = out[out.index("trial  "):].splitlines()
    assert [row.split()[:2] for row in table[1:4]] == [["v9-seed0-leather", "ok"],
                                                       ["v9-seed0-leather+missing", "failed"],
                                                       ["v9-seed0-grid", "ok"]]
    assert sorted(Path(row.split()[-1]).name for row in table[1:4] if " ok " in row) == sorted(f.name for f in folders)
    compare = (runs / "exp" / "COMPARE.md").read_text()
    assert all(f.name in compare for f in folders)
    assert out.rstrip().endswith("1 of 3 trial(s) failed: v9-seed0-leather+missing")


def _ray_processes() -> set[str]:
    ps = subprocess.run(["ps", "-eo", "pid=,args="], check=False, capture_output=True, text=True).stdout
    return {line.split()[0] for line in ps.splitlines() if any(k in line for k in ("raylet", "gcs_server", "ray::"))}


def test_ray_sweep_on_a_local_instance(bench, tmp_path):
    try:
        import ray
    except ImportError as exc:
        pytest.skip(f"Ray is not installed (pip install 'moleflow[ray]'): {exc}")
    before = _ray_processes()
    runs = tmp_path / "runs"
    code, out, err = sweep_cli("--versions", "v9", "--seeds", "0", "1", "--task_orders", "grid", "--backend", "ray",
                               "--cpus_per_trial", "1", "--max_parallel", "2", "--", *train_flags(bench, runs))
    assert code == 0, out + err
    assert "ray: local instance with 2 CPUs, 0 GPUs; each trial 1 CPU, 0 GPU" in out
    assert sum(line.startswith(("[1/2] ok", "[2/2] ok")) for line in out.splitlines()) == 2, out
    folders = run_folders(runs)
    assert len(folders) == 2 and all((f / "metrics.json").is_file() for f in folders)
    assert (runs / "exp" / "COMPARE.md").is_file()
    assert sorted(p.name for p in (runs / "exp" / "sweep-logs").iterdir()) == ["v9-seed0-grid.log",
                                                                             "v9-seed1-grid.log"]
    # Ray was shut down by the sweep, and left nothing running
    assert not ray.is_initialized()
    deadline = time.monotonic() + 15
    while _ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes() - before, "stray Ray processes"
