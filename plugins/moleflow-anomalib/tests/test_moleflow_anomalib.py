"""moleflow-anomalib: discovery from the installed distribution; each anomalib model through moleflow's trainer
on a tiny stream with known defects (trains, checkpoints without the backbone, restores, resumes, scores above
chance, zero forgetting under the moleflow strategy and forgetting under finetune); offline weights and their
clear error; options; anomalib's own AUROC and AUPRO against moleflow's on the same scores."""

from __future__ import annotations

import contextlib
import io
import json
from importlib.metadata import distribution
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from moleflow import registry
from moleflow.cli import main

MODELS = ("anomalib_patchcore", "anomalib_padim", "anomalib_fastflow", "anomalib_dfm")
CPU = torch.device("cpu")
#: real ImageNet features at 64 px (the offline lite0 weights), two classes, tiny loops
ENGINE = ["--img_size", "64", "--task_classes", "leather", "transistor", "--device", "cpu"]
FLAGS = [*ENGINE, "--heatmaps", "0", "--no_report", "--quiet"]
#: anomalib's FastFlow takes only ResNets / CaiT / DeiT, whose weights are not offline here: a random resnet18
SMALL = {"anomalib_fastflow": ["--backbone_name", "resnet18", "--no_pretrained", "--num_epochs", "4",
                               "--flow_steps", "2"]}


def cli(*args: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from moleflow.testing import tiny_benchmark

    return tiny_benchmark(tmp_path_factory.mktemp("bench") / "synth", classes=["leather", "transistor"])


def test_models_come_from_the_installed_distribution():
    assert distribution("moleflow-anomalib").version == "0.1.0"
    found = {c.name: c.distribution for c in registry.components("models")}
    assert all(found.get(name) == "moleflow-anomalib" for name in MODELS)


@pytest.fixture(scope="module")
def runs(bench, tmp_path_factory):
    """One finished run per model (moleflow strategy)."""
    out = {}
    for name in MODELS:
        code, stdout, err = cli("train", "--data_path", bench, "--runs_dir", tmp_path_factory.mktemp(name),
                                "--model", name, *FLAGS, *SMALL.get(name, []))
        assert code == 0, err
        out[name] = Path(stdout.strip().splitlines()[-1].removeprefix("run: "))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_each_model_trains_detects_routes_and_keeps_its_tasks(runs, name):
    metrics = json.loads((runs[name] / "metrics.json").read_text())
    assert metrics["routing"]["accuracy"] == 1.0
    assert metrics["continual"]["bwt"]["image_auroc"] == 0.0  # one model per task, frozen: zero forgetting
    mean = metrics["final"]["mean"]
    # visible defects: every model finds them better than chance, in its own image score and in its own map
    assert mean["image_auroc"] > 0.6 and mean["pixel_auroc"] > 0.6, mean
    assert metrics["definitions"]["image_score"] == "the model's own"
    assert name in metrics["model_description"]
    assert ("random init" if name == "anomalib_fastflow" else "efficientnet-lite0") in metrics["model_description"]
    from safetensors import safe_open

    for t in (0, 1):  # a task's checkpoint holds its model but not the frozen ImageNet backbone
        with safe_open(str(runs[name] / "checkpoints" / f"task_{t}.safetensors"), "pt") as f:
            keys = list(f.keys())
        assert any(k.startswith("model.") for k in keys)
        assert not any(k.startswith("model.feature_extractor.") for k in keys)


@pytest.mark.parametrize("name", MODELS)
def test_a_restored_run_reproduces_its_metrics_and_a_resumed_one_finishes_as_it_did(runs, name, tmp_path):
    import shutil

    from moleflow.config import read_run_config
    from moleflow.continual.trainer import run_training
    from moleflow.inference import evaluate_run
    from moleflow.run_folder import RunFolder

    before = json.loads((runs[name] / "metrics.json").read_text())["final"]["per_class"]
    assert evaluate_run(runs[name], progress=False).read_json("metrics.json")["final"]["per_class"] == before
    copy = tmp_path / "copy"
    shutil.copytree(runs[name], copy)
    progress = json.loads((copy / "progress.json").read_text())
    progress["completed_tasks"], progress["results"] = 1, {"0": progress["results"]["0"]}  # stopped after task 0
    (copy / "progress.json").write_text(json.dumps(progress))
    (copy / "checkpoints" / "task_1.safetensors").unlink()
    resumed = run_training(read_run_config(RunFolder.open(copy)), progress=False, resume=str(copy), log=lambda *_: None)
    assert resumed.read_json("metrics.json")["final"]["per_class"] == before


@pytest.mark.parametrize("strategy, forgets", [("moleflow", False), ("finetune", True)])
def test_patchcore_keeps_task0_under_moleflow_and_forgets_it_under_finetune(bench, tmp_path, strategy, forgets):
    from moleflow.continual.task_data import prepare_tasks
    from moleflow.continual.trainer import ContinualRun
    from moleflow.testing import train_config

    cfg = train_config("--data_path", str(bench), "--runs_dir", str(tmp_path), "--model", "anomalib_patchcore",
                       "--strategy", strategy, *ENGINE)
    tasks, extractor, _ = prepare_tasks(cfg, CPU, progress=False)
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, CPU, progress=False)
    test0 = tasks[0].tests[0].inputs
    state.train_task(0, None)
    before = state.model.score_maps(test0, state.strategy.model_task(0))
    state.train_task(1, None)
    after = state.model.score_maps(test0, state.strategy.model_task(0))
    assert before["score"].shape == (len(test0), 64, 64)  # anomalib's map, at the image's size
    # finetune refits the one memory on task 1 (anomalib's fit replaces it): task 0 is scored differently
    assert all(torch.equal(before[k], after[k]) for k in before) is not forgets


def test_a_backbone_without_offline_weights_is_one_clear_error(bench, tmp_path):
    code, out, err = cli("train", "--data_path", bench, "--runs_dir", tmp_path / "runs", "--model",
                         "anomalib_patchcore", "--backbone_name", "resnet18", *FLAGS)
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line]
    # the run's own backbone (routing reads its features) is resolved first, by moleflow's rules
    assert len(lines) == 1 and "pretrained weights for 'resnet18'" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert "--backbone_weights" in lines[0] and "--no_pretrained" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_options_are_checked_and_reach_anomalib(bench, tmp_path):
    from moleflow.continual.task_data import prepare_tasks
    from moleflow.continual.trainer import ContinualRun
    from moleflow.testing import model_opt_error, train_config

    assert "flow_steps" in model_opt_error("anomalib_patchcore", "flow_steps=2", tmp_path)  # not its option
    code, _, err = cli("train", "--data_path", bench, "--model", "anomalib_padim", "--blur_sigma", "2", *FLAGS)
    assert code != 0 and "--blur_sigma" in err and "own_scores" in err  # anomalib smooths its own maps
    sizes = {}
    for ratio in (0.1, 0.5):
        cfg = train_config("--data_path", str(bench), "--runs_dir", str(tmp_path), "--model", "anomalib_patchcore",
                           "--coreset_ratio", str(ratio), "--layers", "3", *ENGINE)
        tasks, extractor, _ = prepare_tasks(cfg, CPU, progress=False)
        state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, CPU, progress=False)
        state.train_task(0, None)
        sizes[ratio] = tuple(state.model.tasks["0"].memory_bank.shape)
    # 8 training images x 4 x 4 patches of stage 3 (112 channels) at 64 px, a tenth / a half of them kept
    assert sizes == {0.1: (12, 112), 0.5: (64, 112)}


def test_anomalib_and_moleflow_agree_on_auroc_and_aupro():
    from anomalib.metrics import AUPRO, AUROC

    from moleflow.evaluation import metrics as M

    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 20 + [1] * 20)
    scores = torch.rand(40, generator=g) + 0.4 * labels
    masks = torch.zeros(8, 32, 32, dtype=torch.long)
    for i in range(4, 8):  # four anomalous images, two regions on one of them
        masks[i, 4 + i:12 + i, 6:14] = 1
    masks[7, 24:28, 24:30] = 1
    maps = torch.rand(8, 32, 32, generator=g) + 0.6 * masks
    theirs = AUROC(fields=["pred_score", "gt_label"])  # anomalib's metrics read a batch's fields
    theirs.update(SimpleNamespace(pred_score=scores, gt_label=labels))
    assert abs(float(theirs.compute()) - M.image_auroc(labels.numpy(), scores.numpy())) < 1e-3
    pro = AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=0.3)
    pro.update(SimpleNamespace(anomaly_map=maps, gt_mask=masks))
    ours = M.aupro(masks.numpy().astype(bool), maps.numpy(), fpr_limit=0.3)
    assert abs(float(pro.compute()) - ours) < 1e-3, (float(pro.compute()), ours)


def test_fastflow_takes_a_users_resnet_weights_file_and_refuses_a_backbone_anomalib_lacks(bench, tmp_path):
    """anomalib's FastFlow knows ResNets only; their ImageNet weights are not offline here, so a user's file is
    the way to real features: it is loaded key for key into anomalib's extractor."""
    import timm
    from safetensors.torch import save_file

    from moleflow.continual.task_data import prepare_tasks
    from moleflow.continual.trainer import ContinualRun
    from moleflow.errors import MoleflowError
    from moleflow.testing import train_config

    with torch.random.fork_rng():
        torch.manual_seed(123)
        reference = timm.create_model("resnet18", num_classes=0)
    weights = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    cfg = train_config("--data_path", str(bench), "--runs_dir", str(tmp_path), "--model", "anomalib_fastflow",
                       "--backbone_name", "resnet18", "--backbone_weights", str(weights), *ENGINE)
    tasks, extractor, _ = prepare_tasks(cfg, CPU, progress=False)
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, CPU, progress=False)
    state.strategy.begin_task(0, "leather")
    loaded = state.model.tasks["0"].feature_extractor.state_dict()
    assert torch.equal(loaded["conv1.weight"], reference.state_dict()["conv1.weight"])
    assert str(weights) in state.model.describe()  # the run records where the backbone's weights came from
    lite0 = train_config("--data_path", str(bench), "--model", "anomalib_fastflow", *ENGINE)
    with pytest.raises(MoleflowError, match="anomalib's FastFlow takes --backbone_name resnet18 or wide_resnet50_2"):
        lite0.spec.build(lite0.options, lite0.model_context())
