"""The bad-input catalogue: what a researcher's broken data, typo or full disk does to `moleflow`.

Every case runs the real command line in-process and asserts the exit code, that stderr is one `error:` line
naming the offending path or value and what to do, that no traceback is printed and that no run folder is
left behind (the two cases that fail mid-run keep what was finished instead, and say so). The image kinds a
camera or an export tool produces (16-bit, RGBA, palette, grayscale) must simply work.
README's *Bad input* table lists the same cases with their messages.
"""

from __future__ import annotations

import contextlib
import errno
import io
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_layer import left_half_mask, make_csv_class, make_mvtec_classes, noise, save

from moleflow.cli import main

FAST = ["--img_size", "32", "--no_pretrained", "--model", "knn", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """Two tiny MVTec-layout classes, widget and gadget, 32 px, that train fine."""
    return make_mvtec_classes(tmp_path_factory.mktemp("bad_inputs") / "data", ("widget", "gadget"), n_train=3)


@pytest.fixture
def data(clean, tmp_path) -> Path:
    """A private copy of `clean` that a case may break."""
    return Path(shutil.copytree(clean, tmp_path / "data"))


def run(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def run_folders(runs: Path) -> list[Path]:
    return sorted(p.parent for p in runs.rglob("config.json")) if runs.exists() else []


def refused(data: Path, runs: Path, *flags: object, code: int = 2) -> str:
    """`moleflow train` on `data` with `flags`: the one error line (asserted: exit code, one line, no
    traceback, no run folder)."""
    exit_code, _, err = run("train", "--data_path", data, "--task_classes", "widget", "--runs_dir", runs, *FAST,
                            *flags)
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_code == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert not run_folders(runs), f"a run folder was left behind: {run_folders(runs)}"
    return lines[0]


# ----------------------------------------------------------------------------------------------- the data

def test_missing_data_path(tmp_path):
    line = refused(tmp_path / "nowhere", tmp_path / "runs")
    assert str(tmp_path / "nowhere") in line and "--data_path" in line


def test_missing_class_lists_the_classes_found(data, tmp_path):
    line = refused(data, tmp_path / "runs", "--task_classes", "gizmo")
    assert "'gizmo'" in line and "gadget, widget" in line


def test_empty_train_good(data, tmp_path):
    good = data / "widget" / "train" / "good"
    for image in good.iterdir():
        image.unlink()
    assert str(good) in refused(data, tmp_path / "runs")


def test_corrupt_image(data, tmp_path):
    bad = data / "widget" / "train" / "good" / "001.png"
    bad.write_bytes(b"not a png at all")
    assert f"cannot read image {bad}" in refused(data, tmp_path / "runs")


def test_truncated_png(data, tmp_path):
    bad = data / "widget" / "test" / "scratch" / "000.png"
    bad.write_bytes(bad.read_bytes()[:-40])  # header intact: fails only when the pixels are decoded
    assert f"cannot read image {bad}" in refused(data, tmp_path / "runs")


def test_mask_of_another_size(data, tmp_path):
    mask = save(data / "widget" / "ground_truth" / "scratch" / "001_mask.png", left_half_mask(32, 30))
    line = refused(data, tmp_path / "runs")
    assert str(mask) in line and "30x32" in line


def test_defect_image_without_mask(data, tmp_path):
    expected = data / "widget" / "ground_truth" / "scratch" / "000_mask.png"
    expected.unlink()
    assert f"expected {expected}" in refused(data, tmp_path / "runs")


@pytest.mark.parametrize("bad_name, fragment", [
    ("img/missing.png", "missing.png not found"),
    ("../../outside.png", "'../../outside.png' leaves the data root"),
])
def test_csv_row_naming_a_missing_or_escaping_file(tmp_path, bad_name, fragment):
    save(tmp_path / "outside.png", noise(8, 8, 0))
    root = tmp_path / "csvdata"
    rows = [[f"img/n{i}.png", "0", ""] for i in range(8)] + [[f"img/a{i}.png", "1", f"gt/a{i}.png"] for i in range(4)]
    make_csv_class(root, rows[:1] + [[bad_name, "0", ""]] + rows[1:])
    exit_code, _, err = run("train", "--data_path", root, "--dataset_format", "csv", "--task_classes", "gear",
                            "--runs_dir", tmp_path / "runs", *FAST)
    assert exit_code == 2 and err.count("\n") == 1 and "labels.csv line 3" in err and fragment in err, err
    assert not run_folders(tmp_path / "runs")


def test_image_kinds_from_cameras_and_export_tools_work(data, tmp_path):
    """16-bit grey, RGBA, palette and 8-bit grey files in one class: the run goes through."""
    good = data / "widget" / "train" / "good"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)).save(good / "000.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8), "RGBA").save(good / "001.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).convert("P").save(good / "002.png")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L").save(data / "widget/test/good/000.png")
    assert {Image.open(good / f).mode for f in ("000.png", "001.png", "002.png")} >= {"RGBA", "P"}
    code, out, err = run("train", "--data_path", data, "--task_classes", "widget", "--runs_dir", tmp_path / "runs",
                         *FAST)
    assert code == 0 and "error" not in err and "Traceback" not in err, err
    assert len(run_folders(tmp_path / "runs")) == 1


# ------------------------------------------------------------------------------------- names and numbers

@pytest.mark.parametrize("flags, fragments", [
    (["--version", "v99"], ["unknown version 'v99'", "v1", "v9"]),
    (["--model", "nosuch"], ["unknown model 'nosuch'", "knn", "moleflow"]),
    (["--model", "moleflow", "--loss", "nosuch=1"], ["unknown loss 'nosuch'", "nll", "center"]),
    (["--strategy", "nosuch"], ["unknown strategy 'nosuch'", "finetune", "joint"]),
    (["--router", "nosuch"], ["unknown router 'nosuch'", "mahalanobis", "oracle"]),
    (["--backbone_name", "efficientnet_lite7"], ["unknown timm backbone 'efficientnet_lite7'", "efficientnet_lite4",
                                                 "offline: efficientnet_lite0"]),
    (["--img_size", "0"], ["--img_size", "got [0]"]),
    (["--model", "moleflow", "--num_epochs", "-1"], ["--num_epochs -1: must be >= 1"]),
    (["--model", "moleflow", "--batch_size", "0"], ["--batch_size 0: must be >= 1"]),
    (["--model", "moleflow", "--lr", "-0.1"], ["--lr -0.1: must be > 0"]),
])
def test_unknown_names_list_the_known_ones_and_numbers_out_of_range_name_their_range(data, tmp_path, flags,
                                                                                     fragments):
    if "--model" in flags:  # the case's own model replaces FAST's knn
        extra = [f for f in FAST if f not in ("--model", "knn")]
        exit_code, _, err = run("train", "--data_path", data, "--task_classes", "widget", "--runs_dir",
                                tmp_path / "runs", *extra, *flags)
        line = err.strip()
        assert exit_code == 2 and "\n" not in line and "Traceback" not in err, err
        assert not run_folders(tmp_path / "runs")
    else:
        line = refused(data, tmp_path / "runs", *flags)
    for fragment in fragments:
        assert fragment in line, line


def test_a_plugin_that_raises_on_import_breaks_only_itself(installed_plugin, data, tmp_path):
    line = refused(data, tmp_path / "runs", "--model", "broken")
    assert "broken on purpose" in line
    code, _, err = run("train", "--data_path", data, "--task_classes", "widget", "--runs_dir", tmp_path / "runs",
                       *FAST)
    assert code == 0, err


# ----------------------------------------------------------------------------------- failures mid-run

def test_nan_loss_stops_naming_task_epoch_and_step_and_keeps_earlier_checkpoints(data, tmp_path, monkeypatch):
    from moleflow.losses.compose import CompositeLoss

    real = CompositeLoss.__call__
    calls = []

    def nan_from_task_1(self, outputs, batch=None):  # task 0 is one step (3 images, batch 4, 1 epoch)
        total, parts = real(self, outputs, batch)
        calls.append(1)
        return (total * float("nan"), parts) if len(calls) > 1 else (total, parts)

    monkeypatch.setattr(CompositeLoss, "__call__", nan_from_task_1)
    runs = tmp_path / "runs"
    flow = [f for f in FAST if f not in ("--model", "knn")]
    code, _, err = run("train", "--data_path", data, "--task_classes", "widget", "gadget", "--runs_dir", runs, *flow,
                       "--embed_dim", "16", "--num_coupling_layers", "2", "--num_epochs", "1", "--batch_size", "4")
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert "task 1 (gadget): loss became nan at epoch 1, step 1" in err and "--lr" in err
    (folder,) = run_folders(runs)
    assert (folder / "checkpoints" / "task_0.safetensors").is_file()
    assert not (folder / "checkpoints" / "task_1.safetensors").exists()


def test_out_of_disk_while_writing_a_checkpoint_keeps_the_previous_one(data, tmp_path, monkeypatch):
    from moleflow.run_folder import RunFolder

    real_fsync, runs = os.fsync, tmp_path / "runs"
    real_save = RunFolder.save_checkpoint

    def save(self, name, tensors, metadata=None):
        if name == "task_1":  # the disk fills up while task 1's checkpoint is written
            monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
        try:
            return real_save(self, name, tensors, metadata)
        finally:
            monkeypatch.setattr(os, "fsync", real_fsync)

    monkeypatch.setattr(RunFolder, "save_checkpoint", save)
    code, _, err = run("train", "--data_path", data, "--task_classes", "widget", "gadget", "--runs_dir", runs, *FAST)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert "task_1.safetensors (No space left)" in err and "--resume" in err
    (folder,) = run_folders(runs)
    checkpoints = folder / "checkpoints"
    assert RunFolder.open(folder).load_checkpoint("task_0")[0]  # intact and readable
    left = sorted(p.name for p in checkpoints.iterdir())
    assert "task_0.safetensors" in left and not [n for n in left if "task_1" in n or n.endswith(".tmp")], left


def _create_folder(args: tuple[str, multiprocessing.Event]) -> str:
    from moleflow.run_folder import RunFolder

    runs, start = args
    start.wait()
    return str(RunFolder.create(runs, "same", "v9").path)


def test_two_runs_started_at_once_get_distinct_folders(tmp_path):
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Event()
        with context.Pool(4) as pool:
            pending = pool.map_async(_create_folder, [(str(tmp_path), start)] * 4)
            start.set()
            paths = pending.get(timeout=120)
    assert len(set(paths)) == 4 and all(Path(p).is_dir() for p in paths)


# ------------------------------------------------------------------------------------------- safe loading

def _finished(data: Path, runs: Path, *flags: object) -> Path:
    assert run("train", "--data_path", data, "--runs_dir", runs, *FAST, *flags)[0] == 0
    return run_folders(runs)[-1]


def _refused_command(*argv: object) -> str:
    code, _, err = run(*argv)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    return err.strip()


def test_eval_and_resume_refuse_truncated_tampered_and_foreign_checkpoints(clean, tmp_path):
    both = ["--task_classes", "widget", "gadget"]
    mine = _finished(clean, tmp_path / "a", *both)
    other = _finished(clean, tmp_path / "b", *both, "--img_size", "48", "--model_opt", "k=2")
    ckpt = mine / "checkpoints" / "task_1.safetensors"
    original = ckpt.read_bytes()

    shutil.copy(other / "checkpoints" / "task_1.safetensors", ckpt)  # another configuration's file
    line = _refused_command("eval", "--run", mine, "--quiet")
    assert str(ckpt) in line and "img_size: [48] in the checkpoint, [32] in this run" in line
    assert "k: 2 in the checkpoint, 1 in this run" in line

    data = bytearray(original)
    data[-1] ^= 0x01  # tampered: still a well-formed file
    ckpt.write_bytes(bytes(data))
    assert f"checkpoint {ckpt} does not match the checksum" in _refused_command("eval", "--run", mine, "--quiet")
    assert f"checkpoint {ckpt} does not match the checksum" in _refused_command("train", "--resume", mine, "--quiet")

    ckpt.write_bytes(original[: len(original) // 2])  # truncated
    assert f"cannot read checkpoint {ckpt}" in _refused_command("eval", "--run", mine, "--quiet")

    ckpt.write_bytes(original)
    assert run("eval", "--run", mine, "--quiet")[0] == 0  # the run's own file loads again


# ------------------------------------------------------------------------------------------------ predict

def test_predict_on_an_unreadable_image(data, tmp_path):
    runs = tmp_path / "runs"
    assert run("train", "--data_path", data, "--task_classes", "widget", "--runs_dir", runs, *FAST)[0] == 0
    (folder,) = run_folders(runs)
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    for image in (bad, tmp_path / "absent.png"):
        code, _, err = run("predict", "--run", folder, image, "--out", tmp_path / "pred", "--quiet")
        assert code == 2 and "Traceback" not in err and err.count("\n") == 1 and str(image) in err, err
