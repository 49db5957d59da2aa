"""Builds MoLEFlow's shared FrEIA SequenceINN: coupling blocks whose subnets are LoRA layers."""

from __future__ import annotations

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch

from moleflow.flow.subnet import make_subnet_constructor

COUPLING_TYPES = ("allinone", "glow")


def build_coupling_flow(
    dim: int,
    *,
    num_coupling_layers: int,
    coupling_type: str,
    clamp: float,
    subnet_hidden: int,
    lora_rank: int,
    lora_alpha: float,
    lora_scaling: str,
    cond_dim: int = 0,
    spatial_grid: int = 0,
) -> Ff.SequenceINN:
    """num_coupling_layers blocks of `coupling_type`. cond_dim > 0 (v4 CPCF) conditions every block on
    condition 0 of width cond_dim, so each subnet reads [its half, condition] (input width half + cond_dim).
    spatial_grid > 0 (v4 SC-LoRA) makes the subnet layers SpatialLoRALinear."""
    constructor = make_subnet_constructor(
        subnet_hidden, rank=lora_rank, alpha=lora_alpha, scaling=lora_scaling, spatial_grid=spatial_grid
    )
    cond = {"cond": 0, "cond_shape": (cond_dim,)} if cond_dim > 0 else {}
    flow = Ff.SequenceINN(dim)
    for _ in range(num_coupling_layers):
        if coupling_type == "allinone":
            flow.append(
                Fm.AllInOneBlock, subnet_constructor=constructor, affine_clamping=clamp, permute_soft=False, **cond
            )
        else:
            flow.append(Fm.GLOWCouplingBlock, subnet_constructor=constructor, clamp=clamp, **cond)
    redraw_permutations(flow, dim)
    return flow


def is_fixed_permutation(name: str) -> bool:
    """Whether parameter `name` of a flow built here is one of AllInOneBlock's fixed permutation matrices
    (nn.Parameter with requires_grad=False): never trained, and after a task freezes its parameters
    requires_grad no longer tells them apart, so they are known by name."""
    return name.rsplit(".", 1)[-1] in ("w_perm", "w_perm_inv")


def redraw_permutations(flow: Ff.SequenceINN, dim: int) -> None:
    """Draw AllInOneBlock's hard permutations from torch's RNG instead of numpy's global one.

    Makes the whole model init depend on torch.manual_seed alone; the matrices keep FrEIA's
    convention (row i selects channel perm[i]) and stay non-trainable.
    """
    for block in flow.module_list:
        if isinstance(block, Fm.AllInOneBlock) and block.w_perm is not None:
            w = torch.eye(dim)[torch.randperm(dim)]
            with torch.no_grad():
                block.w_perm.copy_(w.view_as(block.w_perm))
                block.w_perm_inv.copy_(w.T.contiguous().view_as(block.w_perm_inv))
