"""No flag that silently does nothing: the table of when each setting is read, and the check that refuses a
requested setting the run would not read.

A setting counts as *requested* when it is given on the command line (any value: typing a flag is a
request), or in a `--config` file with a value other than the one the version preset and the defaults
give (a run's saved config lists every setting and must stay loadable). A preset's own value is never a
request: the preset's sub-grid training simply does not apply to knn or to a flow with SC-LoRA.

Two kinds of rule, checked in this order, both before any image is read:

1. **Model**: the settings of the flow and of the shared training loop (`MODEL_SETTINGS`) are read only by
   a model that says so in its class attribute `reads_settings` (a tuple of setting names, or `ALL` for
   every one; `"loss"` stands for the whole loss group). knn reads none of them; the Students plugin
   reads epochs, batch size and gradient clip but not `--lr` (its optimisers have their own). A model
   that does not declare `reads_settings` (a third-party plugin written before it existed) is not checked.
2. **Switch**: a setting read only when another setting has some value (`RULES`: CPCF's options without
   `--use_cpcf`, `--topk` without `--score_aggregation topk`, LoRA/adapter flags under the single-flow
   strategies, split flags with pre-split data formats, CNN stages on a ViT, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

from moleflow.config import Config, FlowConfig
from moleflow.errors import MoleflowError

#: `reads_settings = ALL`: the model reads every model setting (the built-in flow)
ALL = "all"
#: the loss group: a model that reads the run's --loss reads all four
LOSS_SETTINGS = ("loss", "loss_opt", "center_loss_weight", "focal_gamma")
#: what the shared optimisation loop (continual/fit.py) and the flow's fit read
LOOP_SETTINGS = ("num_epochs", "batch_size", "lr", "weight_decay", "grad_clip", "token_stride", "ema_decay",
                 *LOSS_SETTINGS)
FLOW_SETTINGS = tuple(f.name for f in fields(FlowConfig) if f.name not in ("model", "model_opt"))
MODEL_SETTINGS = FLOW_SETTINGS + LOOP_SETTINGS


def settings_read_by(model_class: Any) -> frozenset[str] | None:
    """The model settings a model class reads (None: it does not say, so it is not checked)."""
    declared = getattr(model_class, "reads_settings", None)
    if declared is None:
        return None
    if declared == ALL:
        return frozenset(MODEL_SETTINGS)
    names = set(declared)
    unknown = names - set(MODEL_SETTINGS)
    if unknown:
        raise MoleflowError(f"{getattr(model_class, '__name__', model_class)}.reads_settings names settings that "
                            f"are not model settings: {', '.join(sorted(unknown))}")
    return frozenset(names | (set(LOSS_SETTINGS) if "loss" in names else set()))


@dataclass(frozen=True)
class Rule:
    """`settings` are read only when `active(cfg)`; `needs` says what would make them count."""

    settings: tuple[str, ...]
    active: Callable[[Config], bool]
    needs: str
    flow_only: bool = True  # a rule about the built-in flow's options (checked only when the model reads them)


def _splits_itself(cfg: Config) -> bool:
    from moleflow import registry

    return bool(getattr(registry.get("datasets", cfg.data.dataset_format), "uses_split_percent", False))


def _is_vit(cfg: Config) -> bool:
    from moleflow.features.extractor import backbone_is_vit

    return backbone_is_vit(cfg.backbone.backbone_name)


def _uses_cuda(cfg: Config) -> bool:
    from moleflow.continual.task_data import resolve_device

    return resolve_device(cfg.train.device).type == "cuda"


def _single_flow(cfg: Config) -> bool:
    from moleflow.continual.strategies import strategy_class

    return strategy_class(cfg.train.strategy).single_flow


def _strategy_reads(cfg: Config) -> tuple[str, ...]:
    from moleflow.continual.strategies import strategy_class

    return tuple(getattr(strategy_class(cfg.train.strategy), "reads_settings", ()))


RULES: tuple[Rule, ...] = (
    Rule(("cpcf_context_kernel", "cpcf_context_dilation", "cpcf_use_attention", "cpcf_fixed_context",
          "cpcf_include_center"),
         lambda c: c.flow.use_cpcf, "--use_cpcf is on"),
    Rule(("cpcf_context_gate",),
         lambda c: c.flow.use_cpcf and c.flow.cpcf_fixed_context and c.flow.cpcf_include_center,
         "--use_cpcf, --cpcf_fixed_context and --cpcf_include_center are on (the gate g of the historical "
         "(1-g)*x + g*mean context; the leave-centre-out context has no gate)"),
    Rule(("sc_lora_grid_size",), lambda c: c.flow.use_spatial_lora, "--use_spatial_lora is on"),
    Rule(("lora_rank", "lora_alpha", "lora_scaling", "task0_lora", "adapter", "adapter_first_task", "task0_mix",
          "adapter_hidden"),
         lambda c: not _single_flow(c), "--strategy keeps experts, e.g. moleflow (finetune and joint train one "
                                        "plain flow: no LoRA experts, no adapters)"),
    Rule(("adapter_hidden",), lambda c: c.flow.adapter == "film", "--adapter is film"),
    Rule(("adapter_first_task",), lambda c: c.flow.adapter != "none", "--adapter is film or instancenorm"),
    Rule(("task0_mix",), lambda c: c.flow.adapter != "none" and c.flow.adapter_first_task,
         "task 0 has an adapter (--adapter film or instancenorm with --adapter_first_task)"),
    Rule(("position_std",), lambda c: c.flow.position_baseline, "--position_baseline is True"),
    Rule(("split_percent", "split_seed"), _splits_itself,
         "--dataset_format splits the data itself (folder or csv; mvtec, mpdd and visa come pre-split)",
         flow_only=False),
    Rule(("topk",), lambda c: c.eval.score_aggregation == "topk", "--score_aggregation is topk", flow_only=False),
    Rule(("replay_per_task",), lambda c: "replay_per_task" in _strategy_reads(c),
         "--strategy reads it (replay)", flow_only=False),
    Rule(("deterministic",), _uses_cuda, "the run uses CUDA (--device cuda, or auto with a GPU); CPU runs are "
         "deterministic already", flow_only=False),
    Rule(("pretrained",), lambda c: not c.backbone.backbone_weights,
         "--backbone_weights is empty (a weights file replaces the backbone's initialisation)", flow_only=False),
    Rule(("cnn_layers",), lambda c: not _is_vit(c), "the backbone is a CNN (this one is a ViT: use --vit_blocks)",
         flow_only=False),
    Rule(("vit_blocks",), _is_vit, "the backbone is a ViT (this one is a CNN: use --cnn_layers)", flow_only=False),
    Rule(("report_max_per_class",), lambda c: c.eval.report, "--report is on (the default)", flow_only=False),
)

#: flow options under which the flow needs whole patch grids, so --token_stride cannot apply
WHOLE_GRID_OPTIONS = ("use_spatial_lora",)


def _spell(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no_{name}"
    if isinstance(value, list):
        return f"--{name} {' '.join(map(str, value))}"
    return f"--{name} {value}"


def refuse_inert(cfg: Config, requested: set[str]) -> None:
    """Raise one MoleflowError naming the first requested setting this run would not read."""
    from moleflow import registry

    flat = cfg.flat()
    model = cfg.flow.model
    reads = settings_read_by(registry.get("models", model))
    if reads is not None:
        for name in MODEL_SETTINGS:
            if name in requested and name not in reads:
                loop = sorted(reads & set(LOOP_SETTINGS))
                what = f"of the training settings it reads only {', '.join('--' + n for n in loop)}" if loop else \
                    "it reads no flow or training-loop setting"
                raise MoleflowError(f"{_spell(name, flat[name])}: model '{model}' does not use it ({what}); "
                                    f"drop --{name}")
    flow_checked = reads is not None and bool(reads & set(FLOW_SETTINGS))
    for rule in RULES:
        if rule.flow_only and not flow_checked:
            continue
        for name in rule.settings:
            if name in requested and not rule.active(cfg):
                raise MoleflowError(f"--{name} changes nothing unless {rule.needs}; change that or drop --{name}")
    if "token_stride" in requested and flat["token_stride"] != 1 and flow_checked:
        whole_grid = [o for o in WHOLE_GRID_OPTIONS if flat[o]]
        if whole_grid:
            raise MoleflowError(f"--token_stride {flat['token_stride']} cannot apply with --{whole_grid[0]} (it needs "
                                "whole patch grids); drop one of them")


def requested_settings(explicit: dict[str, Any], file_given: dict[str, Any], baseline: dict[str, Any]) -> set[str]:
    """Command-line settings always; --config values only where they differ from preset + defaults."""
    return set(explicit) | {name for name, value in file_given.items() if value != baseline[name]}
