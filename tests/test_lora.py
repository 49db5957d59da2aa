from __future__ import annotations

import pytest
import torch
from torch import nn

from moleflow.errors import MoleflowError
from moleflow.flow.lora import LoRALinear, active_expert
from moleflow.flow.subnet import make_subnet_constructor


def _layer(scaling: str = "alpha_over_rank", rank: int = 4, alpha: float = 8.0) -> LoRALinear:
    return LoRALinear(6, 5, rank=rank, alpha=alpha, scaling=scaling)


def test_new_expert_with_zero_B_equals_base_exactly():
    torch.manual_seed(0)
    layer = _layer()
    layer.add_expert(0)
    x = torch.randn(10, 6)
    assert torch.count_nonzero(layer.lora_A["0"]) > 0  # A is random, only B is zero
    with active_expert(0):
        assert torch.equal(layer(x), layer.base(x))


def test_no_active_task_or_missing_expert_uses_base_only():
    torch.manual_seed(0)
    layer = _layer()
    layer.add_expert(1)
    with torch.no_grad():
        layer.lora_B["1"].normal_()
    x = torch.randn(10, 6)
    for task in (None, 0, 7):
        with active_expert(task):
            assert torch.equal(layer(x), layer.base(x))
    assert torch.equal(layer(x), layer.base(x))  # outside any block: the base alone
    with active_expert(1):
        assert not torch.allclose(layer(x), layer.base(x))
        with active_expert(None):  # re-entrant: an inner block wins, the outer one is back after it
            assert torch.equal(layer(x), layer.base(x))
        assert not torch.allclose(layer(x), layer.base(x))


def test_forward_matches_lora_formula():
    torch.manual_seed(0)
    layer = _layer(rank=3, alpha=6.0)
    layer.add_expert(2)
    with torch.no_grad():
        layer.lora_B["2"].normal_()
    x = torch.randn(7, 6)
    a, b = layer.lora_A["2"], layer.lora_B["2"]
    expected = x @ layer.base.weight.T + layer.base.bias + (6.0 / 3) * (x @ a.T @ b.T)
    with active_expert(2):
        torch.testing.assert_close(layer(x), expected)


def test_scaling_variants_give_exact_ratio_of_delta():
    torch.manual_seed(0)
    full, half = _layer("alpha_over_rank"), _layer("alpha_over_2rank")
    assert full.scale == 8.0 / 4 and half.scale == 8.0 / 8
    for layer in (full, half):
        layer.add_expert(0)
        nn.init.zeros_(layer.base.weight)  # output == the LoRA delta alone
        nn.init.zeros_(layer.base.bias)
    with torch.no_grad():
        b = torch.randn(5, 4)
        full.lora_B["0"].copy_(b)
        half.lora_B["0"].copy_(b)
        half.lora_A["0"].copy_(full.lora_A["0"])
    x = torch.randn(9, 6)
    with active_expert(0):
        delta_full, delta_half = full(x), half(x)
    assert torch.count_nonzero(delta_half) > 0
    assert torch.equal(delta_full, 2 * delta_half)


def test_experts_of_different_tasks_are_independent():
    torch.manual_seed(0)
    layer = _layer()
    layer.add_expert(0)
    layer.add_expert(1)
    with torch.no_grad():
        layer.lora_B["0"].normal_()
        layer.lora_B["1"].normal_()
    x = torch.randn(8, 6)
    with active_expert(0):
        out0 = layer(x)
    with torch.no_grad():  # changing expert 1 must not affect task 0
        layer.lora_A["1"].mul_(3.0)
        layer.lora_B["1"].add_(1.0)
    with active_expert(0):
        assert torch.equal(layer(x), out0)
    with active_expert(1):
        out1 = layer(x)
    out1.sum().backward()  # backward outside the block: the graph recorded the expert
    assert layer.lora_A["0"].grad is None and layer.lora_B["0"].grad is None
    assert layer.lora_A["1"].grad is not None and torch.count_nonzero(layer.lora_B["1"].grad) > 0
    assert set(map(id, layer.expert_parameters(1))) == {id(layer.lora_A["1"]), id(layer.lora_B["1"])}


def test_expert_follows_base_dtype_and_duplicates_are_refused():
    layer = _layer().double()
    layer.add_expert(0)
    assert layer.lora_A["0"].dtype == torch.float64 and layer.lora_B["0"].dtype == torch.float64
    with pytest.raises(MoleflowError, match="already exists"):
        layer.add_expert(0)
    with pytest.raises(MoleflowError, match="scaling"):
        LoRALinear(3, 3, rank=2, alpha=1.0, scaling="alpha")


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_subnet_starts_at_zero_output_and_carries_two_lora_layers(dropout):
    torch.manual_seed(0)
    subnet = make_subnet_constructor(16, rank=2, alpha=4.0, scaling="alpha_over_rank", dropout=dropout)(6, 10)
    loras = [m for m in subnet.modules() if isinstance(m, LoRALinear)]
    assert [(m.in_features, m.out_features) for m in loras] == [(6, 16), (16, 10)]
    assert any(isinstance(m, nn.Dropout) for m in subnet) == (dropout > 0)
    out = subnet(torch.randn(4, 6))
    assert out.shape == (4, 10) and torch.count_nonzero(out) == 0
    assert torch.count_nonzero(loras[0].base.weight) > 0  # only the last layer is zeroed
