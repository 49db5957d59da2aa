from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from moleflow import run_folder
from moleflow.errors import MoleflowError
from moleflow.run_folder import (CHECKSUM_KEY, RunFolder, atomic_write_bytes, atomic_write_json, atomic_write_text,
                                 tensor_digest)
from moleflow.run_log import TBLogger, collect_env, git_state

RUN_NAME = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")


def _strict_json(text: str):
    def reject(token: str):
        raise AssertionError(f"invalid JSON constant {token}")

    return json.loads(text, parse_constant=reject)


# ----------------------------------------------------------------------------------------- atomic writes

def test_failed_replace_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(MoleflowError, match=f"cannot write {target} \\(disk gone\\); the previous version"):
        atomic_write_json(target, {"new": 1})
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_interrupt_mid_write_leaves_no_partial_target(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.bin"

    def interrupted(fd):  # the data has been written to the temp file, the rename has not happened
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"x" * 100_000)
    assert not target.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_process_killed_before_rename_keeps_old_file(tmp_path):
    target = tmp_path / "config.json"
    atomic_write_text(target, "old")
    script = textwrap.dedent(f"""
        import os, signal
        from moleflow.run_folder import atomic_write_text
        os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
        atomic_write_text({str(target)!r}, "new" * 10000)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == "old"
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    # the only trace is a hidden temp file, never a half-written config.json
    assert all(p.name.startswith(".config.json.") and p.name.endswith(".tmp") for p in leftovers)


def test_json_nan_becomes_null_and_output_is_strict_json(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"b": float("nan"), "a": [1.5, float("inf"), -float("inf")],
                             "np": np.float32(0.25), "arr": np.array([1, 2]), "t": torch.tensor([0.5, float("nan")]),
                             "p": Path("x/y")})
    text = path.read_text()
    data = _strict_json(text)
    assert data == {"a": [1.5, None, None], "arr": [1, 2], "b": None, "np": 0.25, "p": "x/y", "t": [0.5, None]}
    assert list(data) == sorted(data)  # sort_keys
    assert "  " in text  # indented


def test_written_files_honour_umask(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------------------- run folder

def test_create_makes_unique_folders_in_layout(tmp_path):
    runs = [RunFolder.create(tmp_path, "demo", "v3") for _ in range(30)]
    assert len({r.path for r in runs}) == 30
    for r in runs:
        assert r.path.parent == tmp_path / "demo" / "v3"
        assert RUN_NAME.match(r.path.name)
        assert (r.path / "heatmaps").is_dir() and (r.path / "checkpoints").is_dir()


def test_create_retries_when_same_second_and_same_id(tmp_path, monkeypatch):
    monkeypatch.setattr(run_folder.time, "strftime", lambda fmt: "20240101-000000")
    ids = iter(["abcdef", "abcdef", "123456"])
    monkeypatch.setattr(run_folder.secrets, "token_hex", lambda n: next(ids))
    first = RunFolder.create(tmp_path, "demo", "v3")
    second = RunFolder.create(tmp_path, "demo", "v3")
    assert first.path.name == "20240101-000000-abcdef"
    assert second.path.name == "20240101-000000-123456"


@pytest.mark.parametrize("bad", ["../escape", "a/b", ".."])
def test_create_rejects_names_that_are_not_one_folder(tmp_path, bad):
    with pytest.raises(MoleflowError, match="not a valid folder name"):
        RunFolder.create(tmp_path, bad, "v3")


def test_open_requires_a_run_folder(tmp_path):
    with pytest.raises(MoleflowError, match="not found"):
        RunFolder.open(tmp_path / "missing")
    with pytest.raises(MoleflowError, match="no config.json"):
        RunFolder.open(tmp_path)
    run = RunFolder.create(tmp_path, "e", "v1")
    run.write_json("config.json", {"version": "v1"})
    assert RunFolder.open(run.path).read_json("config.json") == {"version": "v1"}


def test_read_json_errors_name_the_folder(tmp_path):
    run = RunFolder.create(tmp_path, "e", "v1")
    with pytest.raises(MoleflowError, match=re.escape(str(run.path))):
        run.read_json("metrics.json")
    (run.path / "metrics.json").write_text("{broken")
    with pytest.raises(MoleflowError, match="damaged"):
        run.read_json("metrics.json")


def test_results_csv_union_of_columns(tmp_path):
    run = RunFolder.create(tmp_path, "e", "v1")
    run.write_results_csv([{"class": "leather", "image_auroc": 0.91},
                           {"class": "grid", "pixel_auroc": np.float64(0.5), "image_auroc": None}])
    rows = run.read_results_csv()
    assert list(rows[0]) == ["class", "image_auroc", "pixel_auroc"]
    assert rows == [{"class": "leather", "image_auroc": "0.91", "pixel_auroc": ""},
                    {"class": "grid", "image_auroc": "", "pixel_auroc": "0.5"}]


def test_per_image_jsonl_one_valid_object_per_line(tmp_path):
    run = RunFolder.create(tmp_path, "e", "v1")
    rows = [{"filename": "test/crack/000.png", "gt": 1, "pred": 1, "score": float("nan"), "correct": True,
             "heatmap": "heatmaps/leather/crack_000.png", "task": 0, "class": "leather"},
            {"filename": "test/good/001.png", "gt": 0, "pred": 0, "score": np.float32(0.125), "correct": True,
             "heatmap": None, "task": 0, "class": "leather"}]
    run.write_per_image(rows)
    lines = (run.path / "per_image.jsonl").read_text().splitlines()
    assert len(lines) == 2
    parsed = [_strict_json(line) for line in lines]
    assert parsed[0]["score"] is None and parsed[1]["score"] == 0.125
    assert run.read_per_image() == parsed


def test_checkpoint_round_trip_is_bitwise_with_metadata(tmp_path):
    run = RunFolder.create(tmp_path, "e", "v1")
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=gen)
    tensors = {
        "w": base,
        "w_t": base.t(),  # non-contiguous view
        "w_head": base[:2],  # contiguous view sharing storage with "w": safetensors refuses this unless cloned
        "half": torch.randn(3, generator=gen).half(),
        "bf16": torch.randn(3, generator=gen).bfloat16(),
        "idx": torch.arange(5),
        "flag": torch.tensor([True, False]),
        "special": torch.tensor([float("nan"), float("inf"), -0.0]),
    }
    path = run.save_checkpoint("task_0", tensors, {"task": "0", "class": "leather"})
    assert path == run.path / "checkpoints" / "task_0.safetensors"
    loaded, meta = run.load_checkpoint("task_0")
    assert meta == {"task": "0", "class": "leather", CHECKSUM_KEY: tensor_digest(tensors)}
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        got = loaded[name]
        assert got.dtype == t.dtype and got.shape == t.shape
        if t.is_floating_point():  # compare bit patterns so NaN and -0.0 count too
            bits = {2: torch.int16, 4: torch.int32}[t.element_size()]
            assert torch.equal(got.contiguous().view(bits), t.contiguous().view(bits)), name
        else:
            assert torch.equal(got, t), name


def test_a_checkpoint_changed_after_writing_or_truncated_is_refused(tmp_path):
    run = RunFolder.create(tmp_path, "e", "v1")
    path = run.save_checkpoint("task_0", {"w": torch.arange(1000, dtype=torch.float32)})
    data = bytearray(path.read_bytes())
    data[-4] ^= 0x01  # one bit of the last float: still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(MoleflowError, match=f"checkpoint {path} does not match the checksum"):
        run.load_checkpoint("task_0")
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(MoleflowError, match=f"cannot read checkpoint {path}"):
        run.load_checkpoint("task_0")


def test_checkpoint_names_and_missing_checkpoint(tmp_path):
    run = RunFolder.create(tmp_path, "e", "v1")
    for name in ("task_1", "shared_0", "task_0"):
        run.save_checkpoint(name, {"x": torch.zeros(1)})
    (run.path / "checkpoints" / ".task_2.safetensors.1234.tmp").write_bytes(b"partial")  # left by a killed run
    assert run.checkpoint_names() == ["shared_0", "task_0", "task_1"]
    with pytest.raises(MoleflowError, match="available: shared_0, task_0, task_1"):
        run.load_checkpoint("task_2")


def test_heatmap_paths_are_deterministic_and_unique(tmp_path):
    run = RunFolder.create(tmp_path, "e", "v1")
    a = run.heatmap_path("leather", "/data/leather/test/crack/000.png")
    assert a == run.path / "heatmaps" / "leather" / "crack_000.png"
    assert a.parent.is_dir()
    assert run.heatmap_path("leather", "/data/leather/test/crack/000.png") == a
    assert run.heatmap_path("leather", "/data/leather/test/good/000.png").name == "good_000.png"
    # same defect folder and stem elsewhere: must not overwrite the first image's heatmap
    b = run.heatmap_path("leather", "/other/root/crack/000.png")
    assert b != a and b.parent == a.parent
    assert run.heatmap_path("leather", "/other/root/crack/000.png") == b
    rel = run.save_heatmap("grid", "x/test/bent/001.png", b"\x89PNG fake")
    assert rel == "heatmaps/grid/bent_001.png" and (run.path / rel).read_bytes() == b"\x89PNG fake"


# ----------------------------------------------------------------------------------------- environment

def test_collect_env_records_versions_device_seed_and_no_hostname():
    env = collect_env(seed=7, device="cpu")
    for key in ("python", "torch", "timm", "FrEIA", "numpy", "git_sha", "git_dirty"):
        assert key in env
    assert env["seed"] == 7 and env["device"] == "cpu"
    assert env["torch"] == torch.__version__
    assert env["git_sha"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", env["git_sha"])
    host = socket.gethostname()
    text = json.dumps(env)
    if len(host) >= 4:
        assert host not in text


def test_git_state_outside_a_repository(tmp_path):
    assert git_state(tmp_path) == {"git_sha": "unknown", "git_dirty": None}


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_state_sha_and_dirty_flag(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "mod.py").write_text("x = 1\n")
    git("add", "mod.py")
    git("commit", "-q", "-m", "init")
    clean = git_state(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", clean["git_sha"]) and clean["git_dirty"] is False
    (tmp_path / "mod.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"git_sha": clean["git_sha"], "git_dirty": True}


# ----------------------------------------------------------------------------------------- tensorboard

def test_tb_logger_writes_readable_events_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    log_dir = tmp_path / "tb"
    tb = TBLogger(log_dir)
    tb.scalar("leather/image_auroc", 0.75, 0)
    tb.scalar("leather/image_auroc", np.float32(0.875), 1)
    tb.image("heatmaps/leather", np.zeros((8, 12, 3), np.uint8), 0)
    tb.hparams({"lr": 2e-4, "task_classes": ["leather", "grid"], "pretrained": False, "nested": {"k": None}},
               {"final/image_auroc": 0.875, "final/aupro": float("nan")})
    tb.close()
    tb.scalar("after/close", 1.0, 0)  # ignored, must not raise
    tb.hparams({}, {})
    tb.close()

    assert any(p.name.startswith("events.out.tfevents") for p in log_dir.iterdir())
    assert [p for p in log_dir.iterdir() if p.is_dir()] == []  # hparams did not create a sub-run
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    values = [(e.step, e.value) for e in acc.Scalars("leather/image_auroc")]
    assert values == [(0, 0.75), (1, 0.875)]
    assert "after/close" not in tags["scalars"]
    assert "heatmaps/leather" in tags["images"]
    assert math.isclose(acc.Scalars("final/image_auroc")[0].value, 0.875)
    assert "final/aupro" not in tags["scalars"]  # NaN metric dropped
    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info.hparams
    assert math.isclose(start["lr"].number_value, 2e-4)
    assert json.loads(start["task_classes"].string_value) == ["leather", "grid"]
    assert start["pretrained"].string_value == "false"
    assert start["nested/k"].string_value == "none"
