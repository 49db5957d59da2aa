"""MoLE-Flow's options: declared once, here. Each field is a `moleflow train --model moleflow` flag of the same
name (the version history's spellings: `--lora_rank`, `--use_cpcf`, ...), a key a version preset may override
(versions.py), and what `MoLEFlow` is built from (`MoLEFlow.from_options`, or `MoLEFlow(dim, grid, options,
**changes)` in code). `rules` say which option is read only when another has some value: requesting one that
would change nothing is refused before any image is read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from moleflow.losses.compose import LossOptions, parse_loss_terms, with_loss_options
from moleflow.errors import MoleflowError
from moleflow.options import Rule, inactive_defaults, option
from moleflow.training import LoopOptions

#: options read only by a flow that keeps per-task parts (experts, adapters): not under one shared model
PER_TASK_OPTIONS = ("lora_rank", "lora_alpha", "lora_scaling", "task0_lora", "adapter", "adapter_first_task",
                    "task0_mix", "adapter_hidden", "adapter_in_density", "task_blocks", "task_block_hidden")


@dataclass(frozen=True)
class MoLEFlowOptions(LoopOptions, LossOptions):
    num_coupling_layers: int = option(8, "coupling blocks in the shared flow", minimum=1)
    coupling_type: str = option("allinone", "coupling block type", choices=["allinone", "glow"])
    clamp: float = option(2.0, "soft clamp of the coupling scales", above=0)
    subnet_hidden: int = option(0, "hidden width of coupling subnets (0 = 2 x feature width)", minimum=0)
    lora_rank: int = option(8, "rank of each task's LoRA expert", minimum=1)
    lora_alpha: float = option(16.0, "LoRA alpha", above=0)
    lora_scaling: str = option("alpha_over_rank", "LoRA scale", choices=["alpha_over_rank", "alpha_over_2rank"])
    task0_lora: bool = option(True, "task 0 also gets a LoRA expert (v2+)")
    adapter: str = option("film", "per-task input adapter", choices=["none", "instancenorm", "film"])
    adapter_hidden: int = option(-1, "hidden width of the FiLM adapter's residual MLP (-1 = v3's max(D/2,128); "
                                     "0 = no MLP: LayerNorm + per-channel gamma/beta only, 2D+1 parameters per task)",
                                 minimum=-1)
    adapter_first_task: bool = option(True, "task 0 gets an input adapter too")
    adapter_in_density: bool = option(False, "count the FiLM adapter's log-determinant in the patch NLL (the adapter "
                                             "becomes part of the flow, so a task cannot lower its loss by shrinking "
                                             "its own inputs; needs --adapter film --adapter_hidden 0)")
    task_blocks: int = option(0, "coupling blocks each task owns, after the shared flow (z = task blocks(shared "
                                 "flow(x')), conditioned like the shared blocks; trained by their task only): "
                                 "capacity for what the task-0 base and a low-rank expert cannot model", minimum=0)
    task_block_hidden: int = option(0, "hidden width of the task blocks' subnets (0 = the feature width D)",
                                    minimum=0)
    position_baseline: bool = option(False, "v8: subtract each task's mean training NLL at each patch position from "
                                            "its scores (fitted once after the task trains; see flow/score_baseline.py)")
    position_std: bool = option(False, "v9: divide the position baseline's centred score by each position's "
                                       "training std as well (a z-score per position; needs --position_baseline)")
    baseline_interior: str = option("position", "v12: the position baseline's interior: every position its own "
                                                "statistics (v8/v9), or one plane a + b*row + c*col fitted to the "
                                                "interior positions' training means, so the baseline keeps the "
                                                "backbone's border and drift and drops the class's layout (see "
                                                "flow/score_baseline.py)", choices=["position", "plane"])
    baseline_border: int = option(1, "v12: with --baseline_interior plane, positions fewer than this many patches "
                                     "from an edge keep their own statistics (zero padding); on a grid too small "
                                     "for it, (min(h, w) - 1) // 2", minimum=0)
    task0_mix: float = option(0.1, "task-0 adapter output = (1-mix)*x + mix*adapter(x); 0 = plain adapter",
                              minimum=0, maximum=1)
    use_pos_embed: bool = option(True, "add a fixed 2-D sinusoidal positional embedding before the adapter")
    standardize_features: bool = option(True, "standardise features per channel with statistics of each task's "
                                              "own training features (frozen and saved with the task)")
    use_patch_attention: bool = option(False, "v6: gated single-head patch self-attention before the flow, "
                                              "trained at task 0, frozen after")
    use_cpcf: bool = option(False, "v4: condition every coupling subnet on a k x k neighbourhood context of the "
                                   "flow input (cross-patch coupling)")
    cpcf_context_kernel: int = option(3, "v4: odd neighbourhood size k of the CPCF context (replicate padding)",
                                      minimum=1)
    cpcf_context_dilation: int = option(1, "spacing of the CPCF context's k x k neighbours in patches (1 = adjacent)",
                                        minimum=1)
    cpcf_use_attention: bool = option(False, "v4: CPCF context by single-head attention over the k x k "
                                             "neighbourhood instead of a depthwise conv")
    cpcf_fixed_context: bool = option(False, "v4.1: parameter-free CPCF context (mean of the k x k neighbours)")
    cpcf_context_gate: float = option(0.3, "v4.1 with --cpcf_include_center: gate g of (1-g)*x + g*mean_kxk(x)",
                                      minimum=0, maximum=1)
    cpcf_include_center: bool = option(False, "let a patch's CPCF context include the patch itself (the "
                                              "historical formulas; leaks x into its own condition)")
    use_spatial_lora: bool = option(False, "v4: SC-LoRA, each expert is a G x G grid of LoRA pairs blended "
                                           "bilinearly by patch position")
    sc_lora_grid_size: int = option(4, "v4: G, the SC-LoRA grid size (G*G LoRA pairs per layer and task)", minimum=1)
    token_stride: int = option(1, "train each step on every s-th patch row and column of its images (random offset "
                                  "per step; 1/s^2 of the flow's cost); scoring always uses every patch", minimum=1)
    ema_decay: float = option(0.0, "end each task with an exponential moving average of its trained parameters over "
                                   "the optimiser steps, decay d (weights the last ~1/(1-d) steps); 0 = the last step's",
                              minimum=0, below=1)
    center_loss_weight: float = option(0.0, "v5: weight λ of the center loss on z (adds center=λ to --loss); 0 = off",
                                       minimum=0)
    focal_gamma: float = option(0.0, "v7: focal NLL exponent γ (the nll term of --loss becomes focal_nll); 0 = plain "
                                     "NLL", minimum=0)

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(("cpcf_context_kernel", "cpcf_context_dilation", "cpcf_use_attention", "cpcf_fixed_context",
              "cpcf_include_center"), lambda o, c: o.use_cpcf, "--use_cpcf is on"),
        Rule(("cpcf_context_gate",), lambda o, c: o.use_cpcf and o.cpcf_fixed_context and o.cpcf_include_center,
             "--use_cpcf, --cpcf_fixed_context and --cpcf_include_center are on (the gate g of the historical "
             "(1-g)*x + g*mean context; the leave-centre-out context has no gate)"),
        Rule(("sc_lora_grid_size",), lambda o, c: o.use_spatial_lora, "--use_spatial_lora is on"),
        Rule(PER_TASK_OPTIONS, lambda o, c: not c.single_model,
             "--strategy keeps experts, e.g. moleflow (finetune, joint and replay train one plain flow: no LoRA "
             "experts, no adapters)"),
        Rule(("adapter_hidden",), lambda o, c: o.adapter == "film", "--adapter is film"),
        Rule(("adapter_in_density",), lambda o, c: o.adapter == "film" and o.adapter_hidden == 0,
             "--adapter is film with --adapter_hidden 0 (its log-determinant is computed without the MLP)"),
        Rule(("task_block_hidden",), lambda o, c: o.task_blocks > 0, "--task_blocks is 1 or more"),
        Rule(("task_blocks",), lambda o, c: o.task_blocks == 0 or not o.use_spatial_lora,
             "--use_spatial_lora is off (task blocks are plain coupling blocks)"),
        Rule(("adapter_first_task",), lambda o, c: o.adapter != "none", "--adapter is film or instancenorm"),
        Rule(("task0_mix",), lambda o, c: o.adapter != "none" and o.adapter_first_task,
             "task 0 has an adapter (--adapter film or instancenorm with --adapter_first_task)"),
        Rule(("position_std", "baseline_interior"), lambda o, c: o.position_baseline, "--position_baseline is True"),
        Rule(("baseline_border",), lambda o, c: o.position_baseline and o.baseline_interior == "plane",
             "--position_baseline is on with --baseline_interior plane"),
        Rule(("token_stride",), lambda o, c: o.token_stride == 1 or not o.use_spatial_lora,
             "--use_spatial_lora is off (SC-LoRA needs whole patch grids)"),
    )

    def applicable(self, context: Any) -> "MoLEFlowOptions":
        """These options with every one whose rule does not hold back at its default: a version preset sets
        options for the case they serve (v9's z-score for its position baseline, v8's FiLM width for a FiLM
        adapter, v8's sub-grid training for a flow without SC-LoRA), and a run that turns that case off simply
        does not use them. (A requested option that would change nothing is refused before this, by the same
        `rules`.)"""
        return replace(self, **inactive_defaults(self, context))

    def loss_terms(self) -> tuple[list[str], dict[str, dict]]:
        """--loss after the flow's switches: focal_gamma > 0 turns the `nll` term into `focal_nll` (same weight,
        option gamma); center_loss_weight > 0 appends `center=<weight>`; then each term's --loss_opt."""
        terms = list(self.loss)
        parsed = parse_loss_terms(terms)
        names = [name for name, _ in parsed]
        options: dict[str, dict] = {}
        if self.focal_gamma > 0:
            if "focal_nll" in names:
                raise MoleflowError(f"focal NLL defined twice: --loss lists focal_nll and --focal_gamma is "
                                    f"{self.focal_gamma}; drop one (e.g. --focal_gamma 0)")
            if "nll" not in names:
                raise MoleflowError(f"--focal_gamma {self.focal_gamma} replaces the 'nll' term, but --loss "
                                    f"{' '.join(terms)} has none; add nll=1.0 or use --focal_gamma 0")
            terms = [f"focal_nll={weight!r}" if name == "nll" else term for term, (name, weight) in zip(terms, parsed)]
            options["focal_nll"] = {"gamma": self.focal_gamma}
        if self.center_loss_weight > 0:
            if "center" in names:
                raise MoleflowError(f"center loss defined twice: --loss lists center and --center_loss_weight is "
                                    f"{self.center_loss_weight}; drop one (e.g. --center_loss_weight 0)")
            terms.append(f"center={self.center_loss_weight!r}")
        return terms, with_loss_options(terms, options, self.loss_opt)
