"""The shared flow's forward pass and its gradient written out by hand, for the plain MoLE-Flow stack.

Why: a training step of the flow is small (128 rows x 152 channels) and autograd through FrEIA's
AllInOneBlock and LoRA layers spends most of it dispatching ~40 operations per block and recording their
graph. This module computes exactly the maths of `Fm.AllInOneBlock(permute_soft=False, SOFTPLUS global
affine)` with `LoRALinear -> ReLU -> LoRALinear` subnets, forward and backward, in one autograd node
(`torch.autograd.Function`). Measured on 2 CPU cores (`python benchmarks/flow_step.py`, both variants
alternating in one process): a training step of v9's flow 1.41x faster at task 0 (17.4 vs 24.6 ms) and
1.58x at later tasks (11.6 vs 18.3 ms, where the base is frozen and dL/dW is never formed). Outputs equal
FrEIA's to float rounding (tests/test_fused_coupling.py checks z, log|det J| and every parameter's
gradient against autograd through FrEIA in float64, with LoRA experts active).

Per block, rows x = [x1, x2] (x1: the first c1 channels), task expert (A, B) with scale s merged into
the weights, W = W_base + s B A:

    h_pre = [x1, c] W1^T + b1,   h = relu(h_pre),   a = 0.1 (h W2^T + b2) = [u, t]
    sj = clamp * tanh(u),   y2 = x2 * exp(sj) + t                      (affine coupling, soft-clamped)
    g = 0.1 * softplus_{beta=0.5}(global_scale)                         (global affine, per channel)
    out = (cat(x1, y2) * g + global_offset)[:, perm]                   (hard permutation = F.linear(., P))
    log|det J| = sum(sj) + sum(log g)

c is the CPCF condition (flow/cpcf.py; absent without one): every block's subnet reads it beside x1,
and its gradient (the sum over blocks) flows back to whatever computed it (the task adapter's output).
The backward pass is the chain rule of these lines, in reverse, block after block (see `_block_backward`).
Used by MoLEFlow for the non-reverse pass whenever `fusable(flow)` holds (allinone blocks, at most one
condition, no SC-LoRA, no dropout); everything else, and the inverse, runs through FrEIA.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import FrEIA.modules as Fm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moleflow.flow.lora import LoRALinear

#: FrEIA's AllInOneBlock scales its subnet output by this before splitting it into scale and shift
_SUBNET_SCALE = 0.1


def fusable(flow: nn.Module) -> bool:
    """Whether every block of the SequenceINN is an AllInOneBlock this module computes exactly."""
    for block in flow.module_list:
        if not isinstance(block, Fm.AllInOneBlock) or block.GIN or block.householder:
            return False
        if block.conditional and len(block.dims_c) != 1:
            return False
        if block.reverse_pre_permute or block.input_rank != 0 or not hasattr(block, "softplus"):
            return False
        layers = list(block.subnet)
        if len(layers) != 3 or not isinstance(layers[1], nn.ReLU):
            return False
        if any(type(layer) is not LoRALinear for layer in (layers[0], layers[2])):  # SC-LoRA subclasses differ
            return False
        if block.softplus.beta != 0.5 or block.softplus.threshold != 20:
            return False
    return True


@dataclass
class _BlockMeta:
    c1: int
    clamp: float
    perm: Tensor  # out[:, i] = w[:, perm[i]] (F.linear with the permutation matrix)
    inv_perm: Tensor
    scale1: float
    scale2: float
    lora: bool  # whether (A1, B1, A2, B2) follow the block's six base tensors


def _permutation(block: Fm.AllInOneBlock) -> tuple[Tensor, Tensor]:
    """The block's hard permutation as indices, cached until w_perm changes (load_state_dict bumps _version)."""
    w = block.w_perm
    cached = getattr(block, "_moleflow_perm", None)
    if cached is None or cached[0] != (w._version, w.data_ptr()):
        perm = w.detach().argmax(dim=1)
        cached = ((w._version, w.data_ptr()), perm, torch.argsort(perm))
        block._moleflow_perm = cached
    return cached[1], cached[2]


def _gather(flow: nn.Module, task_key: str | None) -> tuple[list[_BlockMeta], list[Tensor]]:
    metas: list[_BlockMeta] = []
    tensors: list[Tensor] = []
    for block in flow.module_list:
        first, _, last = block.subnet
        lora = task_key is not None and task_key in first.lora_A and task_key in last.lora_A
        perm, inv = _permutation(block)
        metas.append(_BlockMeta(block.splits[0], float(block.clamp), perm, inv, first.scale, last.scale, lora))
        tensors += [first.base.weight, first.base.bias.unsqueeze(1), last.base.weight, last.base.bias.unsqueeze(1),
                    block.global_scale.reshape(-1, 1), block.global_offset.reshape(-1, 1)]
        if lora:
            tensors += [first.lora_A[task_key], first.lora_B[task_key], last.lora_A[task_key], last.lora_B[task_key]]
    return metas, tensors


def _merged(weight: Tensor, a: Tensor | None, b: Tensor | None, scale: float) -> Tensor:
    return weight if a is None else torch.addmm(weight, b, a, alpha=scale)


def _split_params(meta: _BlockMeta, tensors: list[Tensor], at: int) -> tuple[list[Tensor | None], int]:
    n = 10 if meta.lora else 6
    block = list(tensors[at:at + n]) + ([] if meta.lora else [None] * 4)
    return block, at + n


def _block_forward(x: Tensor, cond: Tensor | None, meta: _BlockMeta,
                   p: list[Tensor | None]) -> tuple[Tensor, Tensor, tuple]:
    """One block on channels-first x (D, N) and condition (C, N) or None: permuting channels is then a
    gather of contiguous rows, and the halves x1, x2 are contiguous too. Biases, global scale and offset
    come as columns (., 1)."""
    w1b, b1, w2b, b2, gs, off, a1, bb1, a2, bb2 = p
    w1, w2 = _merged(w1b, a1, bb1, meta.scale1), _merged(w2b, a2, bb2, meta.scale2)
    x1, x2 = x[:meta.c1], x[meta.c1:]
    sub_in = x1 if cond is None else torch.cat((x1, cond), 0)  # the subnet's input, [x1, c] as in FrEIA
    h = torch.relu(torch.addmm(b1, w1, sub_in))
    a = torch.addmm(b2, w2, h).mul_(_SUBNET_SCALE)
    c2 = x2.shape[0]
    th = torch.tanh(a[:c2])
    sj = th * meta.clamp
    e = torch.exp(sj)
    v = torch.cat((x1, torch.addcmul(a[c2:], x2, e)), 0)
    g = F.softplus(gs, beta=0.5).mul_(0.1)
    out = torch.addcmul(off, v, g).index_select(0, meta.perm)
    logdet = sj.sum(0) + torch.log(g).sum()
    return out, logdet, (sub_in, x2, w1, w2, h, th, e, v, g)


def _block_backward(gout: Tensor, glog: Tensor, meta: _BlockMeta, p: list[Tensor | None], saved: tuple,
                    need: tuple[bool, ...], need_x: bool) -> tuple[Tensor | None, Tensor, list[Tensor | None]]:
    """Gradients of one block (channels-first): gout = dL/d out (D, N), glog = dL/d logdet (N,). Returns
    dL/dx, dL/d(subnet input [x1, c]) (the condition's part is its rows from c1 on; only meaningful when
    need_x) and the gradients of `p`'s tensors (None where `need`, autograd's needs_input_grad, is False)."""
    w1b, b1, w2b, b2, gs, off, a1, bb1, a2, bb2 = p
    sub_in, x2, w1, w2, h, th, e, v, g = saved
    grads: list[Tensor | None] = [None] * 10
    gw = gout.index_select(0, meta.inv_perm)
    if need[4] or need[5]:
        grads[5] = gw.sum(1, keepdim=True)
        grads[4] = ((gw * v).sum(1, keepdim=True) + glog.sum() / g) * torch.sigmoid(0.5 * gs) * 0.1
    gv = gw * g
    gx1, gy2 = gv[:meta.c1], gv[meta.c1:]
    gx2 = gy2 * e
    gu = torch.addcmul(glog, gx2, x2).mul_(1.0 - th * th).mul_(meta.clamp)  # dL/dsj * dsj/du
    ga = torch.cat((gu, gy2), 0).mul_(_SUBNET_SCALE)
    gh = torch.ops.aten.threshold_backward(w2.t() @ ga, h, 0.0)  # relu's backward, one kernel
    if need[0] or need[2]:  # dL/dW of the merged weights, also what the expert's gradients are made of
        g_w1, g_w2 = gh @ sub_in.t(), ga @ h.t()
        grads[:4] = [g_w1, gh.sum(1, keepdim=True), g_w2, ga.sum(1, keepdim=True)]
        if meta.lora:  # W = W_base + s B A: dL/dA = s B^T dL/dW, dL/dB = s dL/dW A^T
            grads[6:] = [meta.scale1 * (bb1.t() @ g_w1), meta.scale1 * (g_w1 @ a1.t()),
                         meta.scale2 * (bb2.t() @ g_w2), meta.scale2 * (g_w2 @ a2.t())]
    elif meta.lora and any(need[6:]):  # base frozen (tasks >= 1): the same products, never forming dL/dW
        grads[6:] = [meta.scale1 * ((bb1.t() @ gh) @ sub_in.t()), meta.scale1 * (gh @ (a1 @ sub_in).t()),
                     meta.scale2 * ((bb2.t() @ ga) @ h.t()), meta.scale2 * (ga @ (a2 @ h).t())]
    if not need_x:
        return None, None, grads
    if sub_in.shape[0] == meta.c1:  # no condition (kept as one addmm: the unconditioned flow's rounding)
        return torch.cat((torch.addmm(gx1, w1.t(), gh), gx2), 0), None, grads
    g_in = w1.t() @ gh  # dL/d [x1, c] through the subnet
    return torch.cat((gx1 + g_in[:meta.c1], gx2), 0), g_in, grads


def _run(x: Tensor, cond: Tensor | None, metas: list[_BlockMeta], tensors: list[Tensor],
         saved: list | None) -> tuple[Tensor, Tensor]:
    """All blocks on channels-first x (D, N) and condition (C, N) or None; keeps what the backward pass
    needs in `saved` unless None."""
    logdet = x.new_zeros(x.shape[1])
    at = 0
    for meta in metas:
        p, at = _split_params(meta, tensors, at)
        x, block_logdet, keep = _block_forward(x, cond, meta, p)
        logdet = logdet + block_logdet
        if saved is not None:
            saved.append((p, keep))
    return x, logdet


class _FusedStack(torch.autograd.Function):
    """One autograd node for the whole stack: forward = _run, backward = _block_backward in reverse."""

    @staticmethod
    def forward(ctx, x: Tensor, cond: Tensor | None, metas: list[_BlockMeta], *tensors: Tensor) -> tuple[Tensor, Tensor]:
        ctx.metas, ctx.saved = metas, []
        return _run(x, cond, metas, list(tensors), ctx.saved)

    @staticmethod
    def backward(ctx, gout: Tensor, glog: Tensor):
        grads: list[Tensor | None] = []
        gcond = None
        need_cond = ctx.needs_input_grad[1]
        ends = list(itertools.accumulate(10 if meta.lora else 6 for meta in ctx.metas))
        for index in range(len(ctx.metas) - 1, -1, -1):
            meta, (p, keep) = ctx.metas[index], ctx.saved[index]
            n = 10 if meta.lora else 6
            need = ctx.needs_input_grad[3 + ends[index] - n: 3 + ends[index]] + (False,) * (10 - n)
            gout, g_in, block_grads = _block_backward(gout, glog, meta, p, keep, need,
                                                      need_x=index > 0 or ctx.needs_input_grad[0] or need_cond)
            if need_cond:  # every block reads the same condition: its gradients add up
                gcond = g_in[meta.c1:] if gcond is None else gcond + g_in[meta.c1:]
            grads = block_grads[:n] + grads
        # ctx.saved stays: a retained graph (jacobians, retain_graph=True) runs backward more than once;
        # the activations are freed with the graph
        return (gout, gcond, None, *grads)


def fused_flow(flow: nn.Module, rows: Tensor, task_key: str | None,
               cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """rows (N, D) -> (z (N, D), log|det dz/dx| (N,)) through every block of `flow`, with task `task_key`'s
    LoRA expert where the layers have one (None: the base alone) and each row's condition `cond` (N, C)
    for a conditional flow. Same maths as `flow(rows, c=[cond], jac=True)`."""
    metas, tensors = _gather(flow, task_key)
    x = rows.t()
    c = None if cond is None else cond.t().contiguous()
    grad_in = rows.requires_grad or (cond is not None and cond.requires_grad)
    if torch.is_grad_enabled() and (grad_in or any(t.requires_grad for t in tensors)):
        z, logdet = _FusedStack.apply(x, c, metas, *tensors)
    else:  # scoring: no graph, nothing saved
        z, logdet = _run(x, c, metas, tensors, None)
    return z.t(), logdet
