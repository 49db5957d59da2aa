"""No flag that silently does nothing (moleflow/inert_settings.py for the engine's settings, each options class's
`rules` for a model's options): the inverse of test_flags.py.

Every combination the architecture review listed is refused, with one line naming the flag and what would
make it count, before any image is read; the same flag is accepted where it is read; a --config file that
repeats the preset's values (a run's saved config) stays loadable."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from moleflow import registry
from moleflow.cli import main
from moleflow.baselines.discriminator import DiscriminatorOptions
from moleflow.errors import MoleflowError
from moleflow.flow.options import MoLEFlowOptions
from moleflow.inert_settings import RULES
from moleflow.options import default_of, option_fields
from moleflow.testing import train_config

VIT = "vit_tiny_patch16_224"

#: (flags, the error's start) for every listed no-op combination and the other ones the rule table covers
REFUSED = {
    "deterministic on cpu": (["--device", "cpu", "--deterministic"],
                             "--deterministic changes nothing unless the run uses CUDA"),
    "v4.1 gate without include_center": (["--version", "v4.1", "--cpcf_context_gate", "0.5"],
                                         "--cpcf_context_gate changes nothing unless --use_cpcf, --cpcf_fixed_context"),
    "cpcf kernel without cpcf": (["--no_use_cpcf", "--cpcf_context_kernel", "5"], "--cpcf_context_kernel changes nothing unless --use_cpcf"),
    "cpcf attention without cpcf": (["--no_use_cpcf", "--cpcf_use_attention"], "--cpcf_use_attention changes nothing unless --use_cpcf"),
    "cpcf fixed without cpcf": (["--no_use_cpcf", "--cpcf_fixed_context"], "--cpcf_fixed_context changes nothing unless --use_cpcf"),
    "cpcf centre without cpcf": (["--no_use_cpcf", "--cpcf_include_center"], "--cpcf_include_center changes nothing unless --use_cpcf"),
    "sc-lora grid without sc-lora": (["--sc_lora_grid_size", "2"], "--sc_lora_grid_size changes nothing unless --use_spatial_lora"),
    "split percent with mvtec": (["--split_percent", "60", "20", "20"], "--split_percent changes nothing unless --dataset_format"),
    "split seed with visa": (["--dataset_format", "visa", "--split_seed", "3"], "--split_seed changes nothing unless --dataset_format"),
    "topk with max": (["--topk", "5"], "--topk changes nothing unless --score_aggregation is topk"),
    "cnn layers on a ViT": (["--backbone_name", VIT, "--cnn_layers", "1"], "--cnn_layers changes nothing unless the backbone is a CNN"),
    "vit blocks on a CNN": (["--vit_blocks", "3"], "--vit_blocks changes nothing unless the backbone is a ViT"),
    "pretrained with a weights file": (["--pretrained", "--backbone_weights", "w.safetensors"],
                                       "--pretrained changes nothing unless --backbone_weights is empty"),
    "finetune with adapter": (["--strategy", "finetune", "--adapter", "film"], "--adapter changes nothing unless --strategy keeps experts"),
    "finetune with adapter_first_task": (["--strategy", "finetune", "--adapter_first_task"],
                                         "--adapter_first_task changes nothing unless --strategy keeps experts"),
    "joint with task0_mix": (["--strategy", "joint", "--task0_mix", "0.2"], "--task0_mix changes nothing unless --strategy keeps experts"),
    "joint with task0_lora": (["--strategy", "joint", "--task0_lora"], "--task0_lora changes nothing unless --strategy keeps experts"),
    "finetune with lora rank": (["--strategy", "finetune", "--lora_rank", "4"], "--lora_rank changes nothing unless --strategy keeps experts"),
    "finetune with lora alpha": (["--strategy", "finetune", "--lora_alpha", "4"], "--lora_alpha changes nothing unless --strategy keeps experts"),
    "adapter_first_task without adapter": (["--adapter", "none", "--adapter_first_task"],
                                           "--adapter_first_task changes nothing unless --adapter is film or instancenorm"),
    "task0_mix without task-0 adapter": (["--adapter", "film", "--no_adapter_first_task", "--task0_mix", "0.3"], "--task0_mix changes nothing unless task 0 has an adapter"),
    "adapter_hidden without film": (["--adapter", "instancenorm", "--adapter_hidden", "8"], "--adapter_hidden changes nothing unless --adapter is film"),
    "position_std without baseline": (["--no_position_baseline", "--position_std"], "--position_std changes nothing unless --position_baseline"),
    "token_stride with sc-lora": (["--use_spatial_lora", "--token_stride", "2"],
                                  "--token_stride changes nothing unless --use_spatial_lora is off"),
    "cpcf dilation without cpcf": (["--no_use_cpcf", "--cpcf_context_dilation", "2"], "--cpcf_context_dilation changes nothing unless --use_cpcf"),
    "replay memory under finetune": (["--strategy", "finetune", "--replay_per_task", "5"],
                                     "--replay_per_task changes nothing unless --strategy reads it (replay)"),
    "replay with an expert flag": (["--strategy", "replay", "--lora_rank", "4"],
                                   "--lora_rank changes nothing unless --strategy keeps experts"),
    "knn with epochs": (["--model", "knn", "--num_epochs", "3"], "--num_epochs: not a setting, nor an option of model 'knn'"),
    "knn with lr": (["--model", "knn", "--lr", "0.001"], "--lr: not a setting, nor an option of model 'knn'"),
    "knn with loss": (["--model", "knn", "--loss", "nll=1"], "--loss: not a setting, nor an option of model 'knn'"),
    "knn with a flow flag": (["--model", "knn", "--num_coupling_layers", "4"], "--num_coupling_layers: not a setting, nor an option of model 'knn'"),
    "knn with a flow option as --model_opt": (["--model", "knn", "--model_opt", "lora_rank=4"],
                                              "--lora_rank: not an option of model 'knn' (its options: k, memory, chunk)"),
    "discriminator temperature with one expert": (["--model", "discriminator", "--experts", "1", "--temperature", "0.2"],
                                                  "--temperature changes nothing unless --experts >= 2"),
    "task block width without task blocks": (["--task_blocks", "0", "--task_block_hidden", "32"],
                                             "--task_block_hidden changes nothing unless --task_blocks is 1 or more"),
    "adapter log-det without a plain FiLM adapter": (["--adapter_hidden", "16", "--adapter_in_density"],
                                                     "--adapter_in_density changes nothing unless --adapter is film with --adapter_hidden 0"),
    "baseline border with a per-position interior": (["--baseline_interior", "position", "--baseline_border", "1"],
                                                     "--baseline_border changes nothing unless --position_baseline is on "
                                                     "with --baseline_interior plane"),
    "baseline interior without a baseline": (["--no_position_baseline", "--baseline_interior", "plane"],
                                             "--baseline_interior changes nothing unless --position_baseline"),
    "task blocks with sc-lora": (["--use_spatial_lora", "--task_blocks", "1"],
                                 "--task_blocks changes nothing unless --use_spatial_lora is off"),
    "report tiles without a report": (["--no_report", "--report_max_per_class", "3"],
                                      "--report_max_per_class changes nothing unless --report is on"),
    # a model that makes its own maps and image scores (plugins/moleflow-anomalib: own_scores)
    "a blur for anomalib's own maps": (["--model", "anomalib_padim", "--blur_sigma", "2"],
                                       "--blur_sigma changes nothing unless the model's maps and image scores are "
                                       "the engine's to make"),
    "an aggregation of anomalib's own image score": (["--model", "anomalib_dfm", "--score_aggregation", "topk"],
                                                     "--score_aggregation changes nothing unless"),
    "a range margin with the check off": (["--task_range_memory", "0", "--task_range_margin", "2"],
                                          "--task_range_margin changes nothing unless --task_range_memory is above 0"),
}

#: the same flags where they are read: accepted
ACCEPTED = {
    "cpcf kernel with cpcf": ["--use_cpcf", "--cpcf_context_kernel", "5"],
    "token_stride with cpcf (the context is sliced from whole grids)": ["--use_cpcf", "--token_stride", "2"],
    "v4.1 gate with the historical context": ["--version", "v4.1", "--cpcf_include_center", "--cpcf_context_gate", "0.5"],
    "sc-lora grid with sc-lora": ["--use_spatial_lora", "--sc_lora_grid_size", "2"],
    "split with folder": ["--dataset_format", "folder", "--split_percent", "60", "20", "20", "--split_seed", "3"],
    "topk with topk": ["--score_aggregation", "topk", "--topk", "5"],
    "vit blocks on a ViT": ["--backbone_name", VIT, "--vit_blocks", "3"],
    "weights file alone": ["--backbone_weights", "w.safetensors"],
    "lora rank under moleflow": ["--adapter", "film", "--lora_rank", "4", "--task0_mix", "0.2"],
    "finetune with loop settings": ["--strategy", "finetune", "--num_epochs", "3", "--clamp", "1.5"],
    "replay with its memory": ["--strategy", "replay", "--replay_per_task", "5", "--num_epochs", "3"],
    "report tiles with the report": ["--report_max_per_class", "3"],
    "a range margin with the check on": ["--task_range_memory", "50", "--task_range_margin", "2"],
    "task blocks with their width": ["--task_blocks", "2", "--task_block_hidden", "32"],
    "adapter log-det with a plain FiLM adapter": ["--version", "v10", "--adapter_in_density"],
    "v12's baseline options on v11": ["--version", "v11", "--baseline_interior", "plane", "--baseline_border", "1"],
    "knn with its own options": ["--model", "knn", "--model_opt", "k=3", "--embed_dim", "64", "--topk", "3",
                                 "--score_aggregation", "topk"],
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_no_op_combination_is_refused_naming_the_flag(case):
    flags, message = REFUSED[case]
    with pytest.raises(MoleflowError) as error:
        train_config(*flags)
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_the_same_flags_are_accepted_where_they_are_read(case):
    train_config(*ACCEPTED[case])


def test_every_rule_has_a_refused_case():
    """A rule added to the engine's table or to a built-in model's options class without a test of it fails here."""
    tested = {flags[i].lstrip("-") for flags, _ in REFUSED.values() for i in range(len(flags))}
    for rule in RULES + MoLEFlowOptions.rules + DiscriminatorOptions.rules:
        assert any(name in tested for name in rule.options), rule.options


def _other_value(name: str, options_class: type = MoLEFlowOptions) -> list[str]:
    """Command-line words that set option `name` to something other than its default."""
    f = option_fields(options_class)[name]
    default = default_of(f)
    if isinstance(default, bool):
        return [f"--no_{name}" if default else f"--{name}"]
    if "choices" in f.metadata:
        return [f"--{name}", next(c for c in f.metadata["choices"] if c != default)]
    if name == "loss":
        return ["--loss", "nll=2"]
    if name == "loss_opt":
        return ["--loss_opt", "nll.scale=2"]
    if isinstance(default, float):
        return [f"--{name}", str(default * 2 + 0.125)]
    return [f"--{name}", str(default + 2)]


@pytest.mark.parametrize("name", list(option_fields(MoLEFlowOptions)))
def test_every_flow_and_loop_option_is_refused_for_knn(name):
    words = _other_value(name)
    with pytest.raises(MoleflowError, match=f"{words[0]}: not a setting, nor an option of model 'knn'"):
        train_config("--model", "knn", *words)
    with pytest.raises(MoleflowError, match=f"--{name}: not an option of model 'knn'"):
        train_config("--model", "knn", "--model_opt", f"{name}=1")


@pytest.mark.parametrize("model, refused, accepted", [
    ("students", "lr", "num_epochs"), ("firm", "batch_size", "lr"), ("ae", "weight_decay", "lr"),
    ("pixel_gauss", "num_epochs", None),
])
def test_plugin_models_have_exactly_the_loop_options_they_read(model, refused, accepted):
    if model not in registry.names("models"):
        pytest.skip(f"plugin model '{model}' is not installed")
    options = option_fields(registry.get("models", model).options_class)
    assert refused not in options and (accepted is None or accepted in options)
    with pytest.raises(MoleflowError, match=f"--{refused}: not a setting, nor an option of model '{model}'"):
        train_config("--model", model, *_other_value(refused))
    if accepted is not None:
        train_config("--model", model, *_other_value(accepted))
    # the flow's options never reach a plugin model
    with pytest.raises(MoleflowError, match=f"--lora_rank: not a setting, nor an option of model '{model}'"):
        train_config("--model", model, "--lora_rank", "2")


def test_config_file_values_equal_to_the_preset_stay_loadable(tmp_path):
    """A run's saved config lists every setting; only values off the preset count as requests."""
    saved = train_config("--version", "v10", "--no_use_spatial_lora").to_dict()  # what a run writes as config.json
    assert saved["model"]["options"]["token_stride"] == 2 and saved["model"]["options"]["sc_lora_grid_size"] == 4
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    cfg = train_config("--config", str(path))  # sc_lora_grid_size without SC-LoRA: the default, not a request
    assert cfg.model == "moleflow" and cfg.options.token_stride == 2
    saved["model"]["options"]["sc_lora_grid_size"] = 3
    path.write_text(json.dumps(saved))
    with pytest.raises(MoleflowError, match="--sc_lora_grid_size changes nothing unless --use_spatial_lora"):
        train_config("--config", str(path))
    knn = train_config("--model", "knn").to_dict()
    knn["model"]["options"]["num_epochs"] = 3
    path.write_text(json.dumps(knn))
    with pytest.raises(MoleflowError, match="--num_epochs: not an option of model 'knn'"):
        train_config("--config", str(path))


def test_refusal_is_one_line_exit_2_before_any_image_and_no_run_folder(tmp_path):
    runs = tmp_path / "runs"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--data_path", str(tmp_path / "no-data"), "--runs_dir", str(runs),
                     "--model", "knn", "--lr", "0.01"])
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--lr: not a setting, nor an option of model 'knn'" in lines[0]
    assert "Traceback" not in err.getvalue() and "data path" not in lines[0]  # refused before the data is looked at
    assert not runs.exists()
