"""MoLE-Flow: one shared normalizing flow over patch tokens, a LoRA expert and an input adapter per task.

Each patch token (B*h*w rows of width D, plus a fixed positional embedding) is mapped to z by a FrEIA
SequenceINN of coupling blocks whose subnets are LoRALinear layers. Ownership is exact:

* task 0 trains the shared base (subnet base Linears and AllInOneBlock's global affine scale/offset)
  plus its own expert (unless task0_lora=False) and adapter (unless adapter_first_task=False);
* task t >= 1 trains only expert t and adapter t; the base is frozen once task 0 ends;
* with task_blocks > 0, every task also owns that many coupling blocks after the shared flow
  (z = own_t(shared_t(x')), log-dets added): capacity that is the task's alone, where a low-rank change of a
  base fitted to task 0 cannot carry a task that looks different.

So after a task ends nothing used to score it changes, and its scores stay bitwise identical.
The patch score is the NLL of the adapted token x' under the flow: 0.5*||z||^2 - log|det dz/dx'|
(constant 0.5*D*log(2*pi) dropped; the adapter's own Jacobian is not included).

Options with their own modules and docstrings: v6 patch attention (patch_attention.py: shared base, mixes
tokens within an image; inverse() inverts the flow only), v4 CPCF context (cpcf.py: inverse() then needs
context=flow_context(x')), v4 SC-LoRA (spatial_lora.py), v8 position baseline of the scores (score_baseline.py).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from moleflow.contract import FitContext, FitResult, ModelContext
from moleflow.errors import MoleflowError
from moleflow.features.positional import sinusoidal_2d
from moleflow.flow.adapters import make_adapter
from moleflow.flow.blocks import build_coupling_flow, is_fixed_permutation
from moleflow.flow.cpcf import make_context
from moleflow.flow.fit import fit_flow_task
from moleflow.flow.fused_coupling import fusable, fused_flow
from moleflow.flow.lora import LoRALinear, active_expert
from moleflow.flow.options import MoLEFlowOptions
from moleflow.flow.patch_attention import PatchSelfAttention
from moleflow.flow.score_baseline import PositionBaseline
from moleflow.flow.spatial_lora import CornerGroups, SpatialLoRALinear, bilinear_corners
from moleflow.flow.standardize import ChannelStats
from moleflow.flow.task_state import TaskStateMixin
from moleflow.options import check_options


class MoLEFlow(TaskStateMixin, nn.Module):
    """Shared flow + per-task LoRA experts and adapters; see the module docstring for ownership rules.

    Built from `MoLEFlowOptions` (flow/options.py, the one declaration of its settings): `options` with
    `changes` (option fields by their flag names) applied. subnet_hidden 0 uses 2*dim hidden units (the usual
    CFlow/MSFlow choice); coupling_type "glow" is FrEIA's GLOWCouplingBlock (two affine couplings per block,
    no permutation, no global affine); adapter "none" creates no adapter modules, otherwise task 0's adapter
    output is mixed as (1 - task0_mix) * x + task0_mix * adapter(x) unless task0_mix is 0 / None.
    Not options but how a strategy or a test uses the flow: experts=False builds a plain flow (no LoRA banks)
    for the fine-tune/joint strategies, whose base is trained by every task and never frozen by end_task
    (only the adapters are per task); fused=False computes the forward pass through FrEIA (fused_coupling.py).
    """

    options_class = MoLEFlowOptions

    @classmethod
    def from_options(cls, options: MoLEFlowOptions, context: ModelContext) -> "MoLEFlow":
        """The flow of a run: its options (preset values that cannot apply back at their defaults); under a
        strategy that trains one model for every task, a plain flow (no LoRA experts, no adapters)."""
        return cls(context.dim, context.grid, options.applicable(context), experts=not context.single_model)

    def __init__(self, dim: int, grid: tuple[int, int], options: MoLEFlowOptions | None = None, *,
                 experts: bool = True, fused: bool = True, **changes: Any) -> None:
        super().__init__()
        try:
            o = dataclasses.replace(options or MoLEFlowOptions(), **changes)
        except TypeError as exc:  # an unknown option name
            raise MoleflowError(f"MoLEFlow: {exc}; the options are the fields of MoLEFlowOptions") from None
        # the options' ranges and rules (flow/options.py), stated there once: in code as on the command line
        check_options(o, ModelContext(single_model=not experts))
        self.options = o
        # the three options whose stored value and meaning differ (0 / -1 / 0 stand for "default" / "off")
        adapter_hidden = None if o.adapter_hidden is None or o.adapter_hidden < 0 else o.adapter_hidden
        task0_mix = o.task0_mix or None
        subnet_hidden = o.subnet_hidden or 2 * dim
        if dim < 2:
            raise MoleflowError(f"flow dim must be >= 2 (coupling splits channels in two), got {dim}")
        h, w = (int(v) for v in grid)
        self.dim = dim
        self.grid = (h, w)
        self.coupling_type = o.coupling_type
        self.experts = experts
        # a plain flow (experts=False, one model for every task) owns nothing per task: no expert, no adapter
        self.task0_lora = o.task0_lora and experts
        self.adapter_kind = o.adapter if experts else "none"
        self.adapter_hidden = adapter_hidden
        self.adapter_first_task = o.adapter_first_task
        self.task0_mix = task0_mix
        self.adapter_in_density = o.adapter_in_density  # its rule holds: a FiLM adapter without MLP, with experts
        self.use_pos_embed = o.use_pos_embed

        self.flow = build_coupling_flow(
            dim,
            num_coupling_layers=o.num_coupling_layers,
            coupling_type=o.coupling_type,
            clamp=o.clamp,
            subnet_hidden=subnet_hidden,
            lora_rank=o.lora_rank,
            lora_alpha=o.lora_alpha,
            lora_scaling=o.lora_scaling,
            cond_dim=dim if o.use_cpcf else 0,
            spatial_grid=o.sc_lora_grid_size if o.use_spatial_lora else 0,
        )
        # Each task's own coupling blocks after the shared flow (task_blocks > 0), built when the task begins:
        # a whole (narrow) flow stage the task owns, for what the frozen base and a low-rank expert cannot carry
        self.task_flows = nn.ModuleDict()
        self._task_flow_spec = dict(
            num_coupling_layers=o.task_blocks, coupling_type=o.coupling_type, clamp=o.clamp,
            subnet_hidden=o.task_block_hidden or dim, lora_rank=o.lora_rank, lora_alpha=o.lora_alpha,
            lora_scaling=o.lora_scaling, cond_dim=dim if o.use_cpcf else 0,
        ) if experts and o.task_blocks > 0 else None
        self._lora_layers = [m for m in self.flow.modules() if isinstance(m, LoRALinear)]
        # The forward pass (training and scoring) runs through fused_coupling.py where it computes this
        # flow exactly (1.4-1.6x faster per training step on CPU); fused=False keeps FrEIA's, for comparison.
        self.fused = fused and fusable(self.flow)
        # Built after the flow so the flow's random init is the same with and without it.
        self.patch_attention = PatchSelfAttention(dim) if o.use_patch_attention else None
        self.context = None
        if o.use_cpcf:
            self.context = make_context(dim, kernel=o.cpcf_context_kernel, dilation=o.cpcf_context_dilation,
                                        use_attention=o.cpcf_use_attention,
                                        fixed=o.cpcf_fixed_context, gate=o.cpcf_context_gate,
                                        include_center=o.cpcf_include_center)
        self._spatial_layers = [m for m in self._lora_layers if isinstance(m, SpatialLoRALinear)]
        # Bilinear corners of every patch position: deterministic from (grid, G), so never saved.
        corners = bilinear_corners(h, w, o.sc_lora_grid_size) if o.use_spatial_lora else (None, None)
        self.register_buffer("sc_corner_idx", corners[0], persistent=False)
        self.register_buffer("sc_corner_weights", None if corners[1] is None else corners[1].float(),
                             persistent=False)

        self.adapters = nn.ModuleDict()
        self.task_names: list[str] = []
        self._ended: set[int] = set()
        # Per-channel standardisation with statistics per task (standardize.py): backbone features are
        # often tiny (random-init ResNet: std ~0.05), so the clamped couplings would spend their steps on
        # the scale, and one task's statistics do not fit the next task's features. Saved with the task.
        self.standardize = o.standardize_features
        self.input_stats = nn.ModuleDict()
        self.score_baselines = nn.ModuleDict() if o.position_baseline else None  # see score_baseline.py
        self._baseline_spec = dict(scale=o.position_std, interior=o.baseline_interior, border=o.baseline_border)
        self.register_buffer("pos_embed", sinusoidal_2d(h, w, dim) if o.use_pos_embed else None, persistent=False)  # deterministic: never saved

    # ----- task bookkeeping -------------------------------------------------------------------------

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def _check_task(self, task_id: int) -> None:
        if not 0 <= task_id < self.num_tasks:
            raise MoleflowError(
                f"task {task_id} has not begun (tasks begun: {self.num_tasks}); call begin_task({task_id}) first"
            )

    def begin_task(self, task_id: int, class_name: str = "") -> None:
        """Create the task's expert and adapter. Tasks begin in order; any earlier task still open is ended."""
        if task_id != self.num_tasks:
            raise MoleflowError(
                f"begin_task({task_id}) out of order: tasks begin as 0, 1, 2, ...; next expected is {self.num_tasks}"
            )
        for earlier in range(task_id):
            if earlier not in self._ended:
                self.end_task(earlier)  # the base must be frozen before a later task can train
        if self.experts and (task_id > 0 or self.task0_lora):
            for layer in self._lora_layers:
                layer.add_expert(task_id)
        ref = self._lora_layers[0].base.weight  # follows .to(device/dtype) of the model
        if self._task_flow_spec is not None:
            # its LoRA layers never get an expert: the whole block belongs to the task
            self.task_flows[str(task_id)] = build_coupling_flow(self.dim, **self._task_flow_spec).to(ref.device, ref.dtype)
        if self.adapter_kind != "none" and (task_id > 0 or self.adapter_first_task):
            self.adapters[str(task_id)] = make_adapter(self.adapter_kind, self.dim, self.adapter_hidden).to(ref.device, ref.dtype)
        if self.standardize:
            self.input_stats[str(task_id)] = ChannelStats(self.dim).to(ref.device, ref.dtype)
        if self.score_baselines is not None:
            self.score_baselines[str(task_id)] = PositionBaseline(self.grid, **self._baseline_spec).to(ref.device, ref.dtype)
        self.task_names.append(class_name or f"task{task_id}")

    def _expert_parameters(self, task_id: int) -> list[nn.Parameter]:
        return [p for layer in self._lora_layers for p in layer.expert_parameters(task_id)]

    def _adapter_parameters(self, task_id: int) -> list[nn.Parameter]:
        key = str(task_id)
        return list(self.adapters[key].parameters()) if key in self.adapters else []

    def _task_flow_parameters(self, task_id: int) -> list[nn.Parameter]:
        """The learnable parameters of the task's own blocks (never FrEIA's fixed permutation matrices)."""
        key = str(task_id)
        if key not in self.task_flows:
            return []
        return [p for name, p in self.task_flows[key].named_parameters() if not is_fixed_permutation(name)]

    def base_parameters(self) -> list[nn.Parameter]:
        """All learnable shared parameters: flow base (never the fixed permutations, never experts) and,
        when enabled, the patch attention block and the learnable CPCF context extractor."""
        expert_ids = {id(p) for layer in self._lora_layers for d in (layer.lora_A, layer.lora_B) for p in d.values()}
        base = [
            p for name, p in self.flow.named_parameters() if not is_fixed_permutation(name) and id(p) not in expert_ids
        ]
        for extra in (self.patch_attention, self.context):
            base += list(extra.parameters()) if extra is not None else []
        return base

    def _owned_parameters(self, task_id: int) -> list[nn.Parameter]:
        own = self._expert_parameters(task_id) + self._adapter_parameters(task_id) + self._task_flow_parameters(task_id)
        if self.experts and task_id == 0:
            own = self.base_parameters() + own
        return own

    def trainable_parameters(self, task_id: int) -> list[nn.Parameter]:
        """Parameters the optimiser of this task may update (experts on: exactly what the task owns)."""
        self._check_task(task_id)
        if self.experts:
            return self._owned_parameters(task_id)
        return self.base_parameters() + self._adapter_parameters(task_id)

    def fit_task(self, task_id: int, inputs: Tensor, params: list, context: FitContext) -> FitResult:
        """Train task `task_id` on its patch features (flow/fit.py: its loss, loop and sub-grids)."""
        return fit_flow_task(self, task_id, inputs, params, context)

    def end_task(self, task_id: int) -> None:
        """Freeze everything the task owns (task 0 with experts: base + expert 0 + adapter 0)."""
        self._check_task(task_id)
        for p in self._owned_parameters(task_id):
            p.requires_grad_(False)
        self._ended.add(task_id)

    # ----- computation ------------------------------------------------------------------------------

    @contextmanager
    def _active_expert(self, task_id: int, num_rows: int) -> Iterator[None]:
        groups = None
        if self._spatial_layers:  # rows are (image, position) row-major: position = row % (h*w)
            images, rest = divmod(num_rows, self.sc_corner_idx.shape[0])
            if rest:
                h, w = self.grid
                raise MoleflowError(f"SC-LoRA needs whole {h}x{w} patch grids per image; got {num_rows} rows")
            groups = CornerGroups.from_rows(self.sc_corner_idx.repeat(images, 1),
                                            self.sc_corner_weights.repeat(images, 1))
        with active_expert(task_id, groups):
            yield

    @property
    def supports_subgrid(self) -> bool:
        """Whether it may train on strided sub-grids (--token_stride): every flow but SC-LoRA's,
        whose experts are blended per position of a whole grid."""
        return not self._spatial_layers

    def _check_feats(self, feats: Tensor) -> None:
        h, w = self.grid
        # The grid only matters for the positional embedding and SC-LoRA; the flow itself is per token.
        grid_ok = not (self.use_pos_embed or self._spatial_layers) or tuple(feats.shape[1:3]) == (h, w)
        if feats.dim() != 4 or feats.shape[-1] != self.dim or not grid_ok:
            raise MoleflowError(
                f"flow input has shape {tuple(feats.shape)} but the flow was built for (B, {h}, {w}, {self.dim}); "
                "rebuild the model with the extractor's grid and feature dim"
            )

    @torch.no_grad()
    def observe_training_features(self, task_id: int, feats: Tensor) -> None:
        """Fit task `task_id`'s input standardisation on its training round's features (N,h,w,D). A task
        that is still open is refitted (the single-flow baselines train task 0's slot on every round)."""
        if not self.standardize:
            return
        self._check_task(task_id)
        if task_id in self._ended:
            raise MoleflowError(f"input statistics of task {task_id} must be fitted before the task ends (it is frozen)")
        self.input_stats[str(task_id)].fit(feats)

    def _subgrid_slice(self, subgrid: tuple[int, int, int]) -> tuple[slice, slice]:
        if not self.supports_subgrid:
            raise MoleflowError("--token_stride > 1 cannot apply with SC-LoRA (its experts need whole patch grids)")
        dy, dx, stride = subgrid
        if stride < 1 or not (0 <= dy < stride and 0 <= dx < stride):
            raise MoleflowError(f"sub-grid {subgrid}: need 0 <= dy, dx < stride")
        return slice(dy, None, stride), slice(dx, None, stride)

    def adapt(self, feats: Tensor, task_id: int, subgrid: tuple[int, int, int] | None = None) -> Tensor:
        """(B,h,w,D) features of whole patch grids -> the flow's input x' (standardise, positional embedding,
        patch attention if enabled, task adapter). subgrid=(dy, dx, s): x' of the patches [dy::s, dx::s] only
        (training on a sub-grid, --token_stride). Every step here is per patch but the attention, so the
        features are sliced first unless the attention must see the whole grid."""
        return self._adapted(self._before_adapter(feats, task_id, subgrid), task_id, log_det=False)[0]

    def _before_adapter(self, feats: Tensor, task_id: int, subgrid: tuple[int, int, int] | None) -> Tensor:
        self._check_feats(feats)
        pos = self.pos_embed
        if subgrid is not None and self.patch_attention is None:
            rows, cols = self._subgrid_slice(subgrid)
            feats = feats[:, rows, cols]
            pos = None if pos is None else pos[rows, cols]
            subgrid = None
        self._check_task(task_id)
        if self.standardize:
            feats = self.input_stats[str(task_id)](feats)
        x = feats + pos if pos is not None else feats
        if self.patch_attention is not None:
            x = self.patch_attention(x)
        if subgrid is not None:  # only with patch attention: the whole grid went through it
            rows, cols = self._subgrid_slice(subgrid)
            x = x[:, rows, cols]
        return x

    def _adapted(self, x: Tensor, task_id: int, log_det: bool = True) -> tuple[Tensor, Tensor | None]:
        """The task adapter on x: (x', its log|det dx'/dx| per patch with adapter_in_density and `log_det`,
        else None)."""
        key = str(task_id)
        if key not in self.adapters:
            return x, None
        mix = self.task0_mix if task_id == 0 else None
        y = self.adapters[key](x)
        if mix is not None:
            y = (1.0 - mix) * x + mix * y
        return y, self.adapters[key].log_det(x, mix) if self.adapter_in_density and log_det else None

    def flow_context(self, x_adapted: Tensor) -> Tensor | None:
        """(B,h,w,D) flow input x' -> its CPCF context (B,h,w,D), or None without use_cpcf."""
        return self.context(x_adapted) if self.context is not None else None

    def _run_flow(self, grid: Tensor, task_id: int, rev: bool, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B,h,w,D) grid of x' or z -> (B*h*w, D) rows out and their log-dets."""
        rows = grid.reshape(-1, grid.shape[-1])
        cond = None if context is None else context.reshape(rows.shape[0], -1)
        own = self.task_flows[str(task_id)] if str(task_id) in self.task_flows else None
        if self.fused and not rev:
            z, log_jac_det = fused_flow(self.flow, rows, str(task_id), cond)
            if own is not None:  # z = own(shared(x')): the log-dets add
                z, own_log_jac_det = fused_flow(own, z, None, cond)
                log_jac_det = log_jac_det + own_log_jac_det
            return z, log_jac_det
        c = [] if cond is None else [cond]
        with self._active_expert(task_id, rows.shape[0]):
            if rev and own is not None:  # inverse: the task's blocks first, then the shared flow
                rows, own_log_jac_det = own(rows, c=c, rev=True, jac=True)
            out, log_jac_det = self.flow(rows, c=c, rev=rev, jac=True)
            if not rev and own is not None:
                out, own_log_jac_det = own(out, c=c, jac=True)
        return out, log_jac_det if own is None else log_jac_det + own_log_jac_det

    def forward(self, feats: Tensor, task_id: int, subgrid: tuple[int, int, int] | None = None) -> dict[str, Tensor]:
        """feats (B,h,w,D) -> z (B,h,w,D), log_jac_det (B,h,w), patch_score (B,h,w); `embedding` is z again
        (the flow's output is its embedding: losses on embeddings, e.g. deep_svdd_soft_boundary, read it).
        `subgrid`: see adapt(); a CPCF context is computed from the whole grid's x' and then sliced alike."""
        whole = subgrid is not None and self.context is not None  # the context needs the whole grid's x'
        x, adapter_log_det = self._adapted(self._before_adapter(feats, task_id, None if whole else subgrid), task_id)
        context = self.flow_context(x)
        if whole:
            rows, cols = self._subgrid_slice(subgrid)
            x, context = x[:, rows, cols], context[:, rows, cols]
            adapter_log_det = None if adapter_log_det is None else adapter_log_det[:, rows, cols]
        b, h, w, d = x.shape
        z, log_jac_det = self._run_flow(x, task_id, rev=False, context=context)
        z = z.reshape(b, h, w, d)
        log_jac_det = log_jac_det.reshape(b, h, w)
        if adapter_log_det is not None:  # the adapter is part of the density: x -> x' -> z
            log_jac_det = log_jac_det + adapter_log_det
        return {"z": z, "embedding": z, "log_jac_det": log_jac_det,
                "patch_score": 0.5 * z.pow(2).sum(-1) - log_jac_det}

    @torch.no_grad()
    def patch_scores(self, feats: Tensor, task_id: int) -> Tensor:
        """(B,h,w) per-patch NLL (minus the task's position baseline, when on); higher = more anomalous."""
        scores = self.forward(feats, task_id)["patch_score"]
        return scores if self.score_baselines is None else self.score_baselines[str(task_id)](scores)

    @torch.no_grad()
    def observe_trained(self, task_id: int, feats: Tensor) -> None:
        """Contract hook, after a task trains and before it ends: fit its position baseline on the NLL of its
        own training features (N,h,w,D). An open task is refitted (single-flow baselines: every round)."""
        if self.score_baselines is None:
            return
        if task_id in self._ended:
            raise MoleflowError(f"the score baseline of task {task_id} must be fitted before the task ends")
        self.eval()  # as the scores it is subtracted from are computed (the fit loop also ends in eval mode)
        device = self._lora_layers[0].base.weight.device
        scores = torch.cat([self.forward(c.to(device), task_id)["patch_score"] for c in feats.split(16)])
        self.score_baselines[str(task_id)].fit(scores)

    def inverse(self, z: Tensor, task_id: int, context: Tensor | None = None) -> Tensor:
        """(B,h,w,D) latent -> the adapted flow input x' that maps to it (the flow only: adapter and patch
        attention are not inverted). With use_cpcf, context must be flow_context(x') of that same x'."""
        self._check_task(task_id)
        if context is None and self.context is not None:
            raise MoleflowError("with use_cpcf, inverse() needs context=model.flow_context(x') of the x' to recover")
        if context is not None and self.context is None:
            raise MoleflowError("this model was built without use_cpcf; call inverse() without context")
        if context is not None and context.shape != z.shape:
            raise MoleflowError(f"context has shape {tuple(context.shape)}, expected {tuple(z.shape)} like z")
        x, _ = self._run_flow(z, task_id, rev=True, context=context)
        return x.reshape(z.shape)

    # ----- state (task_state.py: saving/loading by ownership) ------------------------------------

    def _task_keys(self, task_id: int) -> list[str]:
        keys: list[str] = []
        for name, module in self.named_modules():
            if isinstance(module, LoRALinear) and module.has_expert(task_id):
                keys += [f"{name}.lora_A.{task_id}", f"{name}.lora_B.{task_id}"]
        if str(task_id) in self.adapters:
            keys += [f"adapters.{task_id}.{k}" for k in self.adapters[str(task_id)].state_dict()]
        if str(task_id) in self.task_flows:
            keys += [f"task_flows.{task_id}.{k}" for k in self.task_flows[str(task_id)].state_dict()]
        if str(task_id) in self.input_stats:
            keys += [f"input_stats.{task_id}.{k}" for k in self.input_stats[str(task_id)].state_dict()]
        if self.score_baselines is not None and str(task_id) in self.score_baselines:
            keys += [f"score_baselines.{task_id}.{k}" for k in self.score_baselines[str(task_id)].state_dict()]
        return keys

    def param_counts(self) -> dict:
        """{"shared": learnable base parameters, "per_task": [learnable parameters each task adds]}. Each
        task also stores 2 x D input statistics (buffers, not counted)."""
        def count(params: list[nn.Parameter]) -> int:
            return sum(p.numel() for p in params)

        return {
            "shared": count(self.base_parameters()),
            "per_task": [
                count(self._expert_parameters(t) + self._adapter_parameters(t) + self._task_flow_parameters(t))
                for t in range(self.num_tasks)
            ],
        }
