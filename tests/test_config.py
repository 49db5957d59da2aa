from __future__ import annotations

import json

import pytest

from moleflow import cli
from moleflow.config import Config, explicit_settings, resolve_config
from moleflow.errors import MoleflowError
from moleflow.versions import chain, version_overrides


def parse_train(*argv: str) -> dict:
    args = cli.build_parser().parse_args(["train", *argv])
    return explicit_settings(args)


def test_version_chain_and_overrides_are_data():
    assert [p.name for p in chain("v3")] == ["v1", "v2", "v3"]
    v1, v2, v3 = (version_overrides(v) for v in ("v1", "v2", "v3"))
    assert v1["lora_scaling"] == "alpha_over_2rank" and v1["task0_lora"] is False and v1["adapter"] == "instancenorm"
    assert v2["lora_scaling"] == "alpha_over_rank" and v2["task0_lora"] is True and v2["adapter"] == "instancenorm"
    assert v3["adapter"] == "film" and v3["task0_mix"] == 0.1 and v3["adapter_first_task"] is True


def test_explicit_flags_beat_the_version_preset():
    cfg, _ = resolve_config(parse_train("--version", "v1", "--lora_scaling", "alpha_over_rank"))
    assert cfg.run.version == "v1"
    assert cfg.flow.lora_scaling == "alpha_over_rank"  # explicit
    assert cfg.flow.adapter == "instancenorm"  # from the preset


def test_config_file_sits_between_preset_and_flags(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"version": "v2", "flow": {"lora_rank": 3}, "num_epochs": 7}))
    cfg, _ = resolve_config(parse_train("--num_epochs", "9"), str(f))
    assert cfg.run.version == "v2" and cfg.flow.task0_lora is True
    assert cfg.flow.lora_rank == 3 and cfg.train.num_epochs == 9


def test_boolean_flags_both_spellings():
    assert parse_train("--no_pretrained")["pretrained"] is False
    assert parse_train("--no-pretrained")["pretrained"] is False
    assert parse_train("--backbone-weights", "w.safetensors")["backbone_weights"] == "w.safetensors"
    assert parse_train("--no_use_pos_embed")["use_pos_embed"] is False


def test_img_size_accepts_one_or_two_numbers():
    assert resolve_config(parse_train("--img_size", "96"))[0].data.img_size == [96]
    assert resolve_config(parse_train("--img_size", "176", "976"))[0].data.img_size == [176, 976]


def test_unknown_version_and_setting_are_clear_errors(tmp_path):
    with pytest.raises(MoleflowError, match="unknown version 'v99'.*v1"):
        resolve_config({"version": "v99"})
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"num_epochz": 3}))
    with pytest.raises(MoleflowError, match="num_epochz"):
        resolve_config({}, str(f))
    with pytest.raises(MoleflowError, match="lora_rank"):
        Config().set("lora_rank", "many")


def test_every_setting_has_exactly_one_flag():
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    dests = [a.dest for a in train._actions if a.option_strings and a.dest not in ("help",)]
    for name in Config().flat():
        assert name in dests, name


def test_loss_flag_is_repeatable():
    assert parse_train("--loss", "nll=1", "--loss", "center=0.5")["loss"] == ["nll=1", "center=0.5"]
    assert parse_train("--loss", "nll=1", "center=0.5")["loss"] == ["nll=1", "center=0.5"]


def test_every_declared_range_refuses_the_value_just_outside_and_accepts_its_bound():
    from moleflow.config import FIELD_SPECS, Config, check_ranges

    checked = []
    for name, (_, f) in FIELD_SPECS.items():
        lo, hi, above = (f.metadata.get(k) for k in ("minimum", "maximum", "above"))
        if lo is None and hi is None and above is None:
            continue
        step = 1 if f.type in (int, "int") else 0.5
        inside, outside = ((lo, lo - step) if lo is not None else (above + step, above))
        cases = [(inside, True), (outside, False)] + ([(hi, True), (hi + step, False)] if hi is not None else [])
        for value, ok in cases:
            cfg = Config()
            cfg.set(name, value)
            shown = cfg.flat()[name]  # as the setting holds it (a float setting shows 0 as 0.0)
            if ok:
                check_ranges(cfg)
            else:
                with pytest.raises(MoleflowError, match=f"--{name} {shown}: must be"):
                    check_ranges(cfg)
        checked.append(name)
    assert {"num_epochs", "batch_size", "lr", "lora_rank", "clamp", "task0_mix"} <= set(checked)
