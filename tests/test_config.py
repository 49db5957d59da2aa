from __future__ import annotations

import json

import pytest

from moleflow.config import FIELD_SPECS, Config, check_engine_ranges, resolve_config
from moleflow.errors import MoleflowError
from moleflow.flow.options import MoLEFlowOptions
from moleflow.options import build_options, option_fields
from moleflow.testing import train_config
from moleflow.train_args import explicit_settings, parse_train_args, train_parser
from moleflow.versions import chain, version_overrides


def parse_train(*argv: str) -> dict:
    return explicit_settings(parse_train_args(train_parser(list(argv)), list(argv)))


def test_version_chain_and_overrides_are_data():
    assert [p.name for p in chain("v3")] == ["v1", "v2", "v3"]
    (m1, v1), (m2, v2), (m3, v3) = (version_overrides(v) for v in ("v1", "v2", "v3"))
    assert m1 == m2 == m3 == "moleflow"
    assert v1["lora_scaling"] == "alpha_over_2rank" and v1["task0_lora"] is False and v1["adapter"] == "instancenorm"
    assert v2["lora_scaling"] == "alpha_over_rank" and v2["task0_lora"] is True and v2["adapter"] == "instancenorm"
    assert v3["adapter"] == "film" and v3["task0_mix"] == 0.1 and v3["adapter_first_task"] is True


def test_explicit_flags_beat_the_version_preset():
    cfg = resolve_config(parse_train("--version", "v1", "--lora_scaling", "alpha_over_rank"))
    assert cfg.run.version == "v1" and isinstance(cfg.options, MoLEFlowOptions)
    assert cfg.options.lora_scaling == "alpha_over_rank"  # explicit
    assert cfg.options.adapter == "instancenorm"  # from the preset


def test_config_file_sits_between_preset_and_flags(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"version": "v2", "model": {"name": "moleflow", "options": {"lora_rank": 3}},
                             "num_epochs": 7, "seed": 4}))
    cfg = resolve_config(parse_train("--num_epochs", "9"), str(f))
    assert cfg.run.version == "v2" and cfg.options.task0_lora is True
    assert cfg.options.lora_rank == 3 and cfg.options.num_epochs == 9 and cfg.train.seed == 4


def test_a_model_without_presets_runs_on_its_own_defaults_and_is_filed_under_its_name():
    cfg = train_config("--model", "knn")
    assert cfg.run.version == "" and cfg.run_label == "knn"
    assert cfg.backbone.embed_dim == 0  # every channel: the features v10 runs on (v1-v7's presets pool to 128)
    assert train_config("--version", "v3").backbone.embed_dim == 128
    assert train_config().run_label == "v12"  # the flow's default preset
    with pytest.raises(MoleflowError, match="--version v10 is a preset of model 'moleflow', not 'knn'"):
        train_config("--model", "knn", "--version", "v10")


def test_saved_config_round_trips_typed():
    cfg = train_config("--model", "discriminator", "--experts", "2", "--loss", "bce=1")
    saved = json.loads(json.dumps(cfg.to_dict()))
    assert saved["model"] == {"name": "discriminator", "options": {**saved["model"]["options"], "experts": 2}}
    assert saved["model"]["options"]["loss"] == ["bce=1"] and "model_opt" not in saved["train"]
    back = Config.from_dict(saved)
    assert back.options == cfg.options and back.flat() == cfg.flat()


def test_boolean_flags_both_spellings():
    assert parse_train("--no_pretrained")["pretrained"] is False
    assert parse_train("--no-pretrained")["pretrained"] is False
    assert parse_train("--backbone-weights", "w.safetensors")["backbone_weights"] == "w.safetensors"
    assert parse_train("--no_use_pos_embed")["use_pos_embed"] is False


def test_img_size_accepts_one_or_two_numbers():
    assert resolve_config(parse_train("--img_size", "96")).data.img_size == [96]
    assert resolve_config(parse_train("--img_size", "176", "976")).data.img_size == [176, 976]


def test_unknown_version_and_setting_are_clear_errors(tmp_path):
    with pytest.raises(MoleflowError, match="unknown version 'v99'.*v1"):
        resolve_config({"version": "v99"})
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"num_epochz": 3}))
    with pytest.raises(MoleflowError, match="--num_epochz: not an option of model 'moleflow'"):
        resolve_config({}, str(f))
    with pytest.raises(MoleflowError, match="--lora_rank: cannot use 'many'"):
        build_options(MoLEFlowOptions, {"lora_rank": "many"}, "model 'moleflow'")


def test_every_setting_and_option_has_exactly_one_flag():
    """For every installed model, plugins included: its options and the engine's settings never share a name."""
    from moleflow import registry

    for model in registry.names("models"):
        parser = train_parser(["--model", model])
        dests = [a.dest for a in parser._actions if a.option_strings and a.dest not in ("help",)]
        cfg = train_config("--model", model)
        for name in cfg.flat():
            assert dests.count(name) in (1, 2), (model, name)  # 2: --X and --no_X of a boolean


def test_loss_flag_is_repeatable():
    assert parse_train("--loss", "nll=1", "--loss", "center=0.5")["loss"] == ["nll=1", "center=0.5"]
    assert parse_train("--loss", "nll=1", "center=0.5")["loss"] == ["nll=1", "center=0.5"]


def _range_cases(f) -> list[tuple[float, bool]]:
    lo, hi, above, below = (f.metadata.get(k) for k in ("minimum", "maximum", "above", "below"))
    step = 1 if isinstance(f.default, int) and not isinstance(f.default, bool) else 0.5
    cases = [(lo, True), (lo - step, False)] if lo is not None else [(above + step, True), (above, False)] \
        if above is not None else []
    cases += [(hi, True), (hi + step, False)] if hi is not None else []
    cases += [(below, False)] if below is not None else []
    return cases


def test_every_declared_engine_range_refuses_the_value_just_outside_and_accepts_its_bound():
    checked = []
    for name, (section, f) in FIELD_SPECS.items():
        for value, ok in _range_cases(f):
            cfg = train_config()
            setattr(getattr(cfg, section), name, type(f.default)(value))
            if ok:
                check_engine_ranges(cfg)
            else:
                with pytest.raises(MoleflowError, match=f"--{name} .*: must be"):
                    check_engine_ranges(cfg)
            checked.append(name)
    assert {"embed_dim", "replay_per_task", "topk"} <= set(checked)


def test_every_declared_option_range_refuses_the_value_just_outside_and_accepts_its_bound():
    checked = []
    for name, f in option_fields(MoLEFlowOptions).items():
        for value, ok in _range_cases(f):
            if ok:
                build_options(MoLEFlowOptions, {name: value}, "model 'moleflow'")
            else:
                with pytest.raises(MoleflowError, match=f"--{name} .*: must be"):
                    build_options(MoLEFlowOptions, {name: value}, "model 'moleflow'")
            checked.append(name)
    assert {"num_epochs", "batch_size", "lr", "lora_rank", "clamp", "task0_mix", "ema_decay"} <= set(checked)
