"""No dead flags: every model, training, evaluation and feature setting, given on the command line, changes
something observable against the same command without it.

Flags go through the real `moleflow train` parser and config resolution; the effect is then measured on the
objects the trainer builds (ContinualRun on features computed once per session, or the extractor), which
is much cheaper than a training run per flag. Flags that only act on the run folder (heatmaps, save_maps,
feature_cache, experiment_name, runs_dir) and --strategy joint are covered in test_cli.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from moleflow.config import Config
from moleflow.continual.task_data import build_extractor, prepare_tasks
from moleflow.continual.trainer import ContinualRun
from moleflow.flow.lora import LoRALinear
from moleflow.testing import train_config

CPU = torch.device("cpu")
TINY = ["--img_size", "64", "--no_pretrained", "--embed_dim", "32", "--num_coupling_layers", "4",
        "--lora_rank", "4", "--num_epochs", "2", "--batch_size", "8", "--device", "cpu", "--lr", "1e-3"]




def without(flags: list[str], flag: str) -> list[str]:
    """`flags` minus `flag` and its value."""
    i = flags.index(flag)
    return flags[:i] + flags[i + 2:]


def config_from_flags(bench: Path, *flags: str) -> Config:
    """What `moleflow train --data_path BENCH TINY... FLAGS` would run with (later flags win)."""
    return train_config("--data_path", str(bench), *TINY, *flags)


@pytest.fixture(scope="session")
def flags_tasks(small_bench):
    tasks, extractor, _ = prepare_tasks(config_from_flags(small_bench), CPU, progress=False)
    return tasks, extractor


# ------------------------------------------------------------------------------------------ observables


def _state(cfg: Config, flags_tasks) -> ContinualRun:
    tasks, extractor = flags_tasks
    return ContinualRun(cfg, tasks, extractor.dim, extractor.grid, CPU, progress=False)


def model_structure(cfg: Config, flags_tasks) -> dict:
    """Parameter counts, LoRA scale and adapter types once tasks 0 and 1 have begun (no training)."""
    state = _state(cfg, flags_tasks)
    for t in (0, 1):
        state.strategy.begin_task(t, state.task_names[t])
    lora = next(m for m in state.model.modules() if isinstance(m, LoRALinear))
    return {"params": state.model.param_counts(), "lora_scale": lora.scale,
            "adapters": {k: type(v).__name__ for k, v in state.model.adapters.items()},
            "blocks": [type(b).__name__ for b in state.model.flow.module_list]}


def task0_scores(cfg: Config, flags_tasks) -> torch.Tensor:
    """Task-0 test patch scores after training task 0 alone."""
    state = _state(cfg, flags_tasks)
    state.train_task(0, None)
    task = state.tasks[0]
    return state.model.patch_scores(task.tests[0].test.patch, state.strategy.model_task(0))


def task0_evaluation(cfg: Config, flags_tasks) -> dict:
    """Image scores and anomaly maps of task 0's test set, evaluated through the router."""
    state = _state(cfg, flags_tasks)
    state.train_task(0, None)
    scored = state.evaluate(0, keep_maps=True)["leather"]
    return {"image": scored.image, "maps": scored.maps, "metrics": state.results[0]["leather"]}


def router_distances(cfg: Config, flags_tasks) -> torch.Tensor:
    state = _state(cfg, flags_tasks)
    for task in state.tasks:
        state.router.add_task(task.task_id, task.train.pooled)
    return torch.cat([state.router.distances(task.tests[0].test.pooled) for task in state.tasks])


def task_range_check(cfg: Config, flags_tasks) -> dict:
    """The no-learned-task check of task 0's test images once every task's range is in."""
    state = _state(cfg, flags_tasks)
    for task in state.tasks:
        state.task_range.add_task(task.task_id, task.train.patch, seed=task.task_id)
    test = state.tasks[0].tests[0].test
    check = state.task_range.check(test.patch, torch.zeros(len(test), dtype=torch.long))
    return {"distance": check.distance, "threshold": check.threshold}


def extractor_output(cfg: Config, flags_tasks) -> dict:
    extractor = build_extractor(cfg, CPU)
    image = flags_tasks[0][0].tests[0].dataset[0]["image"]
    size = extractor.img_size
    if tuple(image.shape[-2:]) != size:
        image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear")[0]
    patch, _ = extractor(image[None])
    return {"grid": extractor.grid, "dim": extractor.dim, "identity": extractor.identity, "patch": patch}


def differs(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        # float32 noise on scores of ~100 is ~1e-5; every real effect here is >= 1e-3
        return a.shape != b.shape or not torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() != b.keys() or any(differs(a[k], b[k]) for k in a)
    return a != b


OBSERVABLES: dict[str, Callable] = {
    "structure": model_structure,
    "scores": task0_scores,
    "evaluation": task0_evaluation,
    "routing": router_distances,
    "task_range": task_range_check,
    "features": extractor_output,
}

# (baseline flags, the same plus the flag under test, observable[, key of the observable that must change])
CASES = {
    "lora_rank": ([], ["--lora_rank", "2"], "structure", "params"),
    "lora_alpha": ([], ["--lora_alpha", "4"], "structure", "lora_scale"),
    "lora_scaling": ([], ["--lora_scaling", "alpha_over_2rank"], "structure", "lora_scale"),
    "no_task0_lora": ([], ["--no_task0_lora"], "structure", "params"),
    "task0_lora": (["--version", "v1"], ["--version", "v1", "--task0_lora"], "structure", "params"),
    "adapter": ([], ["--adapter", "instancenorm"], "structure", "adapters"),
    "adapter_none": (["--version", "v10"], ["--version", "v10", "--adapter", "none"], "structure", "params"),
    "adapter_hidden": (["--adapter", "film"], ["--adapter", "film", "--adapter_hidden", "16"], "structure", "params"),
    "task_blocks": ([], ["--task_blocks", "1"], "structure", "params"),
    "adapter_in_density": ([], ["--no_adapter_in_density"], "scores", None),
    "task_block_hidden": ([], ["--task_block_hidden", "16"], "structure", "params"),
    "position_baseline": (["--no_position_baseline"], ["--position_baseline"], "scores", None),
    "token_stride": ([], ["--token_stride", "1"], "scores", None),
    "position_std": (["--no_position_std"], ["--position_std"], "scores", None),
    "ema_decay": ([], ["--ema_decay", "0.9"], "scores", None),
    "no_adapter_first_task": (["--adapter", "film"], ["--adapter", "film", "--no_adapter_first_task"], "structure",
                              "adapters"),
    "version": ([], ["--version", "v1"], "structure", "adapters"),
    "num_coupling_layers": ([], ["--num_coupling_layers", "2"], "structure", "params"),
    "coupling_type": ([], ["--coupling_type", "glow"], "structure", "blocks"),
    "subnet_hidden": ([], ["--subnet_hidden", "16"], "structure", "params"),
    "task0_mix": (["--adapter", "film"], ["--adapter", "film", "--task0_mix", "0.6"], "scores", None),
    "clamp": ([], ["--clamp", "0.5"], "scores", None),
    "no_use_pos_embed": ([], ["--no_use_pos_embed"], "scores", None),
    "no_standardize_features": ([], ["--no_standardize_features"], "scores", None),
    "lr": ([], ["--lr", "1e-2"], "scores", None),
    "weight_decay": ([], ["--weight_decay", "0.5"], "scores", None),
    # the tiny runs' gradient norms stay ~0.3, below the default clip of 1: only a smaller clip engages,
    # and Adam undoes a constant rescale, so the effect is small (~2e-5 relative) but real
    "grad_clip": ([], ["--grad_clip", "0.01"], "scores", None),
    "num_epochs": ([], ["--num_epochs", "3"], "scores", None),
    "batch_size": ([], ["--batch_size", "4"], "scores", None),
    "seed": ([], ["--seed", "1"], "scores", None),
    "score_aggregation": ([], ["--score_aggregation", "topk", "--topk", "3"], "evaluation", "image"),
    "topk": (["--score_aggregation", "topk"], ["--score_aggregation", "topk", "--topk", "3"], "evaluation", "image"),
    "blur_sigma": ([], ["--blur_sigma", "0"], "evaluation", "maps"),
    "router": ([], ["--router", "euclidean"], "routing", None),
    "task_range_memory": ([], ["--task_range_memory", "20"], "task_range", "distance"),
    "task_range_margin": ([], ["--task_range_margin", "2"], "task_range", "threshold"),
    "embed_dim": ([], ["--embed_dim", "16"], "features", "dim"),
    "img_size": ([], ["--img_size", "32"], "features", "grid"),
    "cnn_layers": ([], ["--cnn_layers", "1", "2"], "features", "grid"),
    "backbone_name": ([], ["--backbone_name", "vit_tiny_patch16_224"], "features", "grid"),
    "vit_blocks": (["--backbone_name", "vit_tiny_patch16_224"],
                   ["--backbone_name", "vit_tiny_patch16_224", "--vit_blocks", "0"], "features", "patch"),
    "loss": ([], ["--loss", "nll=1.0", "center=0.5"], "scores", None),
    "center_loss_weight": ([], ["--center_loss_weight", "0.5"], "scores", None),
    "loss_opt": (["--loss", "nll=1.0", "deep_svdd_soft_boundary=0.05"],
                 ["--loss", "nll=1.0", "deep_svdd_soft_boundary=0.05", "--loss_opt", "deep_svdd_soft_boundary.nu=0.5"],
                 "scores", None),
    "focal_gamma": ([], ["--focal_gamma", "2"], "scores", None),
    "use_patch_attention": ([], ["--use_patch_attention"], "structure", "params"),
    # v10 (the default) has the fixed context on: these flags are tested where they change something
    "use_cpcf": (["--version", "v9"], ["--version", "v9", "--use_cpcf"], "structure", "params"),
    "cpcf_context_kernel": (["--no_cpcf_fixed_context"], ["--no_cpcf_fixed_context", "--cpcf_context_kernel", "5"],
                            "structure", "params"),
    "cpcf_context_dilation": (["--version", "v10"], ["--version", "v10", "--cpcf_context_dilation", "2"], "scores", None),
    "cpcf_use_attention": (["--no_cpcf_fixed_context"], ["--no_cpcf_fixed_context", "--cpcf_use_attention"],
                           "structure", "params"),
    "cpcf_fixed_context": (["--version", "v4"], ["--version", "v4", "--cpcf_fixed_context"], "structure", "params"),
    "cpcf_include_center": (["--version", "v4.1"], ["--version", "v4.1", "--cpcf_include_center"], "scores", None),
    "cpcf_context_gate": (["--version", "v4.1", "--cpcf_include_center"],
                          ["--version", "v4.1", "--cpcf_include_center", "--cpcf_context_gate", "0.8"], "scores", None),
    "use_spatial_lora": ([], ["--use_spatial_lora"], "structure", "params"),
    "sc_lora_grid_size": (["--use_spatial_lora"], ["--use_spatial_lora", "--sc_lora_grid_size", "2"], "structure",
                          "params"),
}


def settings_effect(bench: Path, flags_tasks, flags: list[str], observable: str, key: str | None):
    value = OBSERVABLES[observable](config_from_flags(bench, *flags), flags_tasks)
    return value[key] if key else value


@pytest.fixture(scope="session")
def baselines(small_bench, flags_tasks) -> Callable:
    """The observable without the flag, computed (twice, to prove it reproducible) once per session."""
    seen: dict = {}

    def get(flags: list[str], observable: str, key: str | None):
        if (tuple(flags), observable) not in seen:
            first, again = (OBSERVABLES[observable](config_from_flags(small_bench, *flags), flags_tasks)
                            for _ in range(2))
            assert not differs(first, again), f"{observable} is not reproducible; a flag test would prove nothing"
            seen[tuple(flags), observable] = first
        value = seen[tuple(flags), observable]
        return value[key] if key else value

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_flag_changes_something(name, small_bench, flags_tasks, baselines):
    base, flagged, observable, key = CASES[name]
    changed = settings_effect(small_bench, flags_tasks, flagged, observable, key)
    assert differs(baselines(base, observable, key), changed), \
        f"{' '.join(flagged)} changed nothing in {observable}/{key}"


# settings whose effect is tested elsewhere, or that have nothing to change on this data
NOT_IN_CASES = {
    "model_opt": "test_plugin_example: test_model_opt_reaches_the_plugin_model",
    "data_path": "test_cli: training and bad-input tests",
    "task_classes": "test_cli: tables list exactly these classes; joint run on two classes",
    "dataset_format": "test_data_layer: one registered lister per format",
    "split_percent": "folder/csv formats only (test_splits); the mvtec layout has fixed splits",
    "split_seed": "folder/csv formats only (test_splits)",
    "pretrained": "test_cli: offline pretrained weights fail, --no_pretrained trains",
    "backbone_weights": "test_backbone_weights_file_replaces_the_random_init below",
    "feature_cache": "test_cli: cache files written by one run, hit by the next",
    "model": "a single registered model; a plugin model is tested in test_registry",
    "strategy": "test_finetune_changes_task0_scores_after_later_tasks below; joint in test_cli; a registered "
                "one in test_registry",
    "extractor": "one built-in extractor; test_registry: a class registered under another name is the one built",
    "device": "cpu is the only device in the test environment",
    "save_maps": "test_cli: maps/<class>.npz with and without",
    "heatmaps": "test_cli: 2 PNGs per class vs none",
    "report": "test_report: test_train_writes_the_report_and_names_it (a report folder by default, none with --no_report)",
    "report_max_per_class": "test_report: test_report_max_per_class_keeps_the_worst (2 tiles per class page)",
    "experiment_name": "test_cli: folder location",
    "runs_dir": "test_cli: folder location",
    "scenario": "test_streams: each published scenario's task sizes, and the N-M run end to end",
    "replay_per_task": "test_streams: the memory holds exactly N rows per earlier task (and all when fewer)",
    "deterministic": "CUDA only (no GPU here): refused on CPU and its switches checked in test_determinism",
}


def test_every_setting_has_a_flag_test():
    from moleflow.config import FIELD_SPECS

    flagged = {tok[2:].removeprefix("no_") for base, flags, *_ in CASES.values() for tok in flags
               if tok.startswith("--")}
    untested = sorted(set(FIELD_SPECS) - flagged - set(NOT_IN_CASES))
    assert not untested, f"settings with no test that they change anything: {untested}; add them to CASES"


def test_standardize_features_fits_input_statistics_only_when_on(small_bench, flags_tasks):
    off = _state(config_from_flags(small_bench, "--no_standardize_features"), flags_tasks)
    off.train_task(0, None)
    assert len(off.model.input_stats) == 0
    on = _state(config_from_flags(small_bench), flags_tasks)
    on.train_task(0, None)
    on.train_task(1, None)
    stats = on.model.input_stats
    for t in (0, 1):  # each task's statistics come from its own training features
        flat = on.tasks[t].train_inputs.reshape(-1, on.model.dim).double()
        torch.testing.assert_close(stats[str(t)].mean, flat.mean(0).float())
        assert bool(stats[str(t)].fitted)
    assert not torch.allclose(stats["0"].std, stats["1"].std)
    assert {"input_stats.1.mean", "input_stats.1.std"} <= set(on.model.task_state(1))  # saved with the task


def test_finetune_changes_task0_scores_after_later_tasks(small_bench, flags_tasks):
    change = {}
    for strategy in ("moleflow", "finetune"):
        flags = TINY if strategy == "moleflow" else without(TINY, "--lora_rank")  # one plain flow: no experts to size
        state = _state(train_config("--data_path", str(small_bench), *flags, "--strategy", strategy), flags_tasks)
        state.train_task(0, None)
        before = state.model.patch_scores(state.tasks[0].tests[0].test.patch, state.strategy.model_task(0))
        state.train_task(1, None)
        after = state.model.patch_scores(state.tasks[0].tests[0].test.patch, state.strategy.model_task(0))
        change[strategy] = (after - before).abs().max().item()
    assert change["moleflow"] == 0.0 and change["finetune"] > 1e-3


def test_backbone_weights_file_replaces_the_random_init(small_bench, flags_tasks, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(123)  # a different init than --no_pretrained's seeded one
    weights = tmp_path / "efficientnet_lite0.safetensors"
    save_file(timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0).state_dict(), str(weights))
    random_init = extractor_output(config_from_flags(small_bench), flags_tasks)
    # a weights file replaces the init, so --no_pretrained would be refused beside it
    argv = ["--data_path", str(small_bench), *[f for f in TINY if f != "--no_pretrained"]]
    from_file = extractor_output(train_config(*argv, "--backbone_weights", str(weights)), flags_tasks)
    assert from_file["grid"] == random_init["grid"] and from_file["dim"] == random_init["dim"]
    assert differs(random_init["patch"], from_file["patch"]) and "sha256:" in from_file["identity"]
