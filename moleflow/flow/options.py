"""MoLE-Flow's options: declared once, here. Each field is a `moleflow train` flag of the same name (the
version history's spellings: `--lora_rank`, `--use_cpcf`, ...), a key of `VersionPreset.overrides`, and what
`MoLEFlow` is built from (`MoLEFlow.from_config`, or `MoLEFlow(dim, grid, options, **changes)` in code).
config.py puts these fields in the settings tree beside `--model` and `--model_opt`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from moleflow.setting import setting as _opt


@dataclass(frozen=True)
class MoLEFlowOptions:
    num_coupling_layers: int = _opt(8, "coupling blocks in the shared flow", minimum=1)
    coupling_type: str = _opt("allinone", "coupling block type", choices=["allinone", "glow"])
    clamp: float = _opt(2.0, "soft clamp of the coupling scales", above=0)
    subnet_hidden: int = _opt(0, "hidden width of coupling subnets (0 = 2 x feature width)", minimum=0)
    lora_rank: int = _opt(8, "rank of each task's LoRA expert", minimum=1)
    lora_alpha: float = _opt(16.0, "LoRA alpha", above=0)
    lora_scaling: str = _opt("alpha_over_rank", "LoRA scale", choices=["alpha_over_rank", "alpha_over_2rank"])
    task0_lora: bool = _opt(True, "task 0 also gets a LoRA expert (v2+)")
    adapter: str = _opt("film", "per-task input adapter", choices=["none", "instancenorm", "film"])
    adapter_hidden: int = _opt(-1, "hidden width of the FiLM adapter's residual MLP (-1 = v3's max(D/2,128); "
                                   "0 = no MLP: LayerNorm + per-channel gamma/beta only, 2D+1 parameters per task)",
                                   minimum=-1)
    adapter_first_task: bool = _opt(True, "task 0 gets an input adapter too")
    position_baseline: bool = _opt(False, "v8: subtract each task's mean training NLL at each patch position from "
                                          "its scores (fitted once after the task trains; see flow/score_baseline.py)")
    position_std: bool = _opt(False, "v9: divide the position baseline's centred score by each position's "
                                     "training std as well (a z-score per position; needs --position_baseline)")
    task0_mix: float = _opt(0.1, "task-0 adapter output = (1-mix)*x + mix*adapter(x); 0 = plain adapter",
                            minimum=0, maximum=1)
    use_pos_embed: bool = _opt(True, "add a fixed 2-D sinusoidal positional embedding before the adapter")
    standardize_features: bool = _opt(True, "standardise features per channel with statistics of each task's "
                                            "own training features (frozen and saved with the task)")
    use_patch_attention: bool = _opt(False, "v6: gated single-head patch self-attention before the flow, "
                                            "trained at task 0, frozen after")
    use_cpcf: bool = _opt(False, "v4: condition every coupling subnet on a k x k neighbourhood context of the "
                                 "flow input (cross-patch coupling)")
    cpcf_context_kernel: int = _opt(3, "v4: odd neighbourhood size k of the CPCF context (replicate padding)",
                                    minimum=1)
    cpcf_context_dilation: int = _opt(1, "spacing of the CPCF context's k x k neighbours in patches (1 = adjacent)",
                                      minimum=1)
    cpcf_use_attention: bool = _opt(False, "v4: CPCF context by single-head attention over the k x k "
                                           "neighbourhood instead of a depthwise conv")
    cpcf_fixed_context: bool = _opt(False, "v4.1: parameter-free CPCF context (mean of the k x k neighbours)")
    cpcf_context_gate: float = _opt(0.3, "v4.1 with --cpcf_include_center: gate g of (1-g)*x + g*mean_kxk(x)",
                                    minimum=0, maximum=1)
    cpcf_include_center: bool = _opt(False, "let a patch's CPCF context include the patch itself (the "
                                            "historical formulas; leaks x into its own condition)")
    use_spatial_lora: bool = _opt(False, "v4: SC-LoRA, each expert is a G x G grid of LoRA pairs blended "
                                         "bilinearly by patch position")
    sc_lora_grid_size: int = _opt(4, "v4: G, the SC-LoRA grid size (G*G LoRA pairs per layer and task)", minimum=1)

    def applicable(self) -> "MoLEFlowOptions":
        """These options with the values that cannot apply switched off: a version preset sets them for the
        case they serve (v9's z-score for its position baseline, v8's FiLM width for a FiLM adapter), and
        a run that turns that case off simply does not use them. (An explicit flag that would change nothing
        is refused before this: inert_settings.py.)"""
        return replace(self, position_std=self.position_std and self.position_baseline,
                       adapter_hidden=self.adapter_hidden if self.adapter == "film" else -1)

    @classmethod
    def from_settings(cls, flow_settings: Any) -> "MoLEFlowOptions":
        """The options of a run's `cfg.flow` (any object with these attributes)."""
        return cls(**{f.name: getattr(flow_settings, f.name) for f in fields(cls)})
