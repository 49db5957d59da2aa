"""Version presets: data, not branches. A version = the model it configures + parent + typed overrides of that
model's options (and of engine settings such as the features' width) + description + the flags it introduced.

Each preset is registered in the `moleflow.versions` entry-point group (built-ins through moleflow's own
setup.cfg), so a plugin can add a version. `--version v3` applies v1 -> v2 -> v3 in order; explicit flags
win over all of them (config.resolve_config, which also checks every override against the model's options
class: a misspelt name is an error naming the preset). One preset per model may be its `default`: the version
a run of that model gets without `--version`; a model with none runs on its own option defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from moleflow import registry
from moleflow.errors import MoleflowError


@dataclass(frozen=True)
class VersionPreset:
    name: str
    parent: str | None
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)  # option (or engine setting) name -> value
    introduces: tuple[str, ...] = ()  # flags this version added to the CLI
    model: str = "moleflow"  # the model whose options the overrides set
    default: bool = False  # the version a run of `model` gets when --version is not given


V1 = VersionPreset(
    "v1",
    None,
    "task 0 trains the base flow only; later tasks: base frozen + LoRA (scale alpha/(2*rank)); "
    "adapter = InstanceNorm + zero-init residual MLP on tasks >= 1",
    {
        "embed_dim": 128,  # v1-v7 were measured on 128 channels pooled from the features (v8 keeps all: 0)
        "lora_scaling": "alpha_over_2rank",
        "task0_lora": False,
        "adapter": "instancenorm",
        "adapter_first_task": False,
        "task0_mix": 0.0,
    },
    ("lora_rank", "lora_alpha"),
)
V2 = VersionPreset(
    "v2",
    "v1",
    "LoRA scale alpha/rank; task 0 also gets a LoRA expert",
    {"lora_scaling": "alpha_over_rank", "task0_lora": True},
    ("lora_scaling", "task0_lora"),
)
V3 = VersionPreset(
    "v3",
    "v2",
    "FiLM adapter (LayerNorm, gamma/beta, residual gate 0.5, hidden max(C/2,128)) on every task; "
    "task 0 = 0.9*identity + 0.1*adapted",
    {"adapter": "film", "adapter_first_task": True, "task0_mix": 0.1},
    ("adapter", "adapter_first_task", "task0_mix"),
)
V4 = VersionPreset(
    "v4",
    "v3",
    "CPCF: coupling subnets conditioned on a learnable 3x3 depthwise-conv neighbourhood context of x' "
    "(trained at task 0, frozen after) + SC-LoRA: each expert a 4x4 grid of LoRA pairs, bilinear in position",
    {"use_cpcf": True, "use_spatial_lora": True},
    ("use_cpcf", "cpcf_context_kernel", "cpcf_use_attention", "use_spatial_lora", "sc_lora_grid_size"),
)
V41 = VersionPreset(
    "v4.1",
    "v4",
    "fixed CPCF context: the mean of each patch's 3x3 neighbours (the patch itself left out): no parameters, so no "
    "task-0 bias in the context (--cpcf_include_center --cpcf_context_gate g: the historical (1-g)*x + g*mean_3x3(x), "
    "which leaks x into its own condition)",
    {"cpcf_fixed_context": True},
    ("cpcf_fixed_context", "cpcf_context_gate"),
)
V5 = VersionPreset(
    "v5",
    "v3",
    "v3 + center loss on z: total = NLL + 0.05 * mean ||z||^2 / D (fixed centre at 0)",
    {"center_loss_weight": 0.05},
    ("center_loss_weight",),
)
V7 = VersionPreset(
    "v7",
    "v3",
    "v3 + focal NLL: per-patch NLL weighted by (1 - exp(-nll))^2, so well-explained patches count less",
    {"focal_gamma": 2.0},
    ("focal_gamma",),
)
V6 = VersionPreset(
    "v6",
    "v3",
    "gated single-head patch self-attention (pre-LN attention + FFN, tanh gates starting at identity) "
    "before the task adapter; part of the shared base: trained at task 0, frozen after",
    {"use_patch_attention": True},
    ("use_patch_attention",),
)
V8 = VersionPreset(
    "v8",
    "v3",
    "the recipe for pretrained features (efficientnet_lite0, stages 2+3): all 152 channels kept (no channel "
    "pooling), batches of 2 images (4x v3's optimiser steps), each step on a random stride-2 sub-grid of their "
    "patches (1/4 of the flow's work per step), lr 2e-3, 30 epochs; each task's mean training NLL per patch "
    "position subtracted from its scores (border patches); LoRA rank 4 and an MLP-free FiLM adapter, so a task "
    "adds < 5 % of the shared flow",
    {"embed_dim": 0, "batch_size": 2, "token_stride": 2, "lr": 2e-3, "num_epochs": 30, "position_baseline": True,
     "lora_rank": 4, "adapter_hidden": 0},
    ("adapter_hidden", "position_baseline", "token_stride"),
)

V9 = VersionPreset(
    "v9",
    "v8",
    "v8 with each task's position baseline a z-score: the patch score minus its position's mean training NLL, "
    "divided by that position's training std (positions differ in spread as well as in level, and the image "
    "score is a max over positions, so the noisiest position decided it)",
    {"position_std": True},
    ("position_std",),
)

V10 = VersionPreset(
    "v10",
    "v9",
    "v9 with every coupling subnet conditioned on the mean of the patch's 3x3 neighbours in the flow input "
    "(v4.1's parameter-free CPCF context, the patch itself left out), computed on the whole grid before the "
    "training sub-grid is taken: the flow scores a patch given its surroundings (thin texture defects stand "
    "out against their neighbours); 20 epochs instead of 30 (the context costs ~1/3 more per step, and the "
    "last 10 epochs bought no image AUROC)",
    {"use_cpcf": True, "cpcf_fixed_context": True, "num_epochs": 20},
)

V11 = VersionPreset(
    "v11",
    "v10",
    "v10 with two coupling blocks of each task's own after the shared flow (subnets 76 wide, conditioned on the "
    "same neighbourhood context: z = own_t(shared_t(x'))) and the FiLM adapter's log-determinant in the NLL. "
    "The base is fitted to task 0 and frozen, and a later task's rank-4 expert could not carry it to a task that "
    "looks different (a flow per task, --strategy separate, scored 0.06 higher on the 1x15 stream); the adapter "
    "sat outside the density, so a task could lower its loss by shrinking its own inputs, and a five-class task "
    "did (its FiLM gain fell to 0.12, its loss to -4.7 against -2.2 for a flow of its own): --scenario 10-5's "
    "second task fell below chance in pixel AUROC. Every per-task transform now counts in log|det J|; a task "
    "adds 90,745 parameters, 9.8 % of the shared flow",
    {"task_blocks": 2, "task_block_hidden": 76, "adapter_in_density": True},
    ("task_blocks", "task_block_hidden", "adapter_in_density"),
)

V12 = VersionPreset(
    "v12",
    "v11",
    "v11 with the position baseline's interior one plane (a + b*row + c*col, fitted to the interior positions' "
    "training means) and only the two-patch border ring scored against its own positions, without v9's "
    "per-position std: a per-position baseline learns the backbone's artefacts (zero padding at the border, a "
    "drift across the grid) and also the class's layout, and subtracting an object's layout lifts its plain "
    "background to the object's level, where the background's noise competes with the defects in the pixel "
    "metrics (re-scoring the same v11 flows: pixel AUROC 0.844 -> 0.884 and AUPRO 0.480 -> 0.569 on the 1x15 "
    "stream). Training is v11's: only the scores change",
    {"baseline_interior": "plane", "baseline_border": 2, "position_std": False},
    ("baseline_interior", "baseline_border"),
    default=True,
)


def get_preset(name: str) -> VersionPreset:
    preset = registry.get("versions", name)
    if not isinstance(preset, VersionPreset):
        raise MoleflowError(f"version '{name}' is registered but is not a VersionPreset ({type(preset).__name__})")
    return preset


def chain(name: str) -> list[VersionPreset]:
    """Root first: v3 -> [v1, v2, v3]."""
    out: list[VersionPreset] = []
    seen: set[str] = set()
    current: str | None = name
    while current is not None:
        if current in seen:
            raise MoleflowError(f"version '{name}': parent cycle at '{current}'")
        seen.add(current)
        preset = get_preset(current)
        out.append(preset)
        current = preset.parent
    return out[::-1]


def version_overrides(name: str) -> tuple[str, dict[str, Any]]:
    """The model version `name` configures and its chain's overrides merged (root first, later wins)."""
    presets = chain(name)
    merged: dict[str, Any] = {}
    for preset in presets:
        if preset.model != presets[-1].model:
            raise MoleflowError(f"version '{name}': its parent '{preset.name}' configures model '{preset.model}', "
                                f"not '{presets[-1].model}'")
        merged.update(preset.overrides)
    return presets[-1].model, merged


def default_version(model: str) -> str:
    """The preset marked `default` for `model`, or "" when it has none (its options' defaults apply)."""
    defaults = [p.name for p in map(get_preset, registry.names("versions")) if p.model == model and p.default]
    if len(defaults) > 1:
        raise MoleflowError(f"model '{model}' has several default versions ({', '.join(sorted(defaults))}); "
                            "uninstall the plugin that adds one")
    return defaults[0] if defaults else ""


def _natural_key(name: str) -> list:
    """v2 before v10, v4 before v4.1 before v5: numbers compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def describe_versions() -> list[VersionPreset]:
    return [get_preset(n) for n in sorted(registry.names("versions"), key=_natural_key)]
