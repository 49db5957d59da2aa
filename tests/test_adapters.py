from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moleflow.errors import MoleflowError
from moleflow.features.positional import sinusoidal_2d
from moleflow.flow.adapters import FiLMAdapter, IdentityAdapter, InstanceNormAdapter, make_adapter
from moleflow.flow.model import MoLEFlow

DIM = 32


def _feats(b: int = 2, h: int = 4, w: int = 4, d: int = DIM) -> torch.Tensor:
    return 3.0 * torch.randn(b, h, w, d) + 1.5


def test_film_starts_with_half_gate_and_documented_output():
    torch.manual_seed(0)
    adapter = FiLMAdapter(DIM)
    assert adapter.gate.item() == 0.5
    assert adapter.mlp[0].out_features == 128  # max(D//2, 128)
    assert FiLMAdapter(512).mlp[0].out_features == 256
    x = _feats()
    torch.testing.assert_close(adapter(x), 0.5 * x + 0.5 * F.layer_norm(x, (DIM,)))


def test_film_without_mlp_owns_2d_plus_1_parameters_and_learns_its_affine():
    adapter = FiLMAdapter(DIM, hidden=0)
    assert adapter.mlp is None and sum(p.numel() for p in adapter.parameters()) == 2 * DIM + 1
    x = _feats()
    torch.testing.assert_close(adapter(x), 0.5 * x + 0.5 * F.layer_norm(x, (DIM,)))
    adapter(x).pow(2).mean().backward()
    assert torch.count_nonzero(adapter.gamma.grad) > 0 and torch.count_nonzero(adapter.beta.grad) > 0
    assert FiLMAdapter(DIM, hidden=48).mlp[0].out_features == 48
    with pytest.raises(MoleflowError, match=">= 0"):
        FiLMAdapter(DIM, hidden=-2)


def test_adapter_hidden_without_a_film_adapter_is_refused_when_given_not_when_preset():
    from moleflow.testing import train_config

    for kind in ("none", "instancenorm"):
        with pytest.raises(MoleflowError, match="--adapter_hidden changes nothing unless --adapter is film"):
            train_config("--adapter", kind, "--adapter_hidden", "0")
        cfg = train_config("--version", "v8", "--adapter", kind)  # v8's preset width is simply not used
        assert cfg.options.adapter_hidden == 0 and cfg.options.adapter == kind


def test_film_gate_stays_in_unit_interval_and_adapter_learns():
    torch.manual_seed(0)
    adapter = FiLMAdapter(DIM)
    with torch.no_grad():
        adapter.gate_logit.fill_(50.0)
    assert 0.0 < adapter.gate.item() <= 1.0
    with torch.no_grad():
        adapter.gate_logit.zero_()
    x = _feats()
    before = adapter(x).detach()
    opt = torch.optim.SGD(adapter.parameters(), lr=0.1)
    adapter(x).pow(2).mean().backward()
    assert torch.count_nonzero(adapter.mlp[2].weight.grad) > 0  # zero-init layer still receives gradient
    opt.step()
    assert not torch.allclose(adapter(x), before)


def test_instancenorm_adapter_equals_instance_norm_at_init():
    torch.manual_seed(0)
    adapter = InstanceNormAdapter(DIM)
    x = _feats()
    out = adapter(x)
    expected = F.instance_norm(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, expected)
    # statistics are per image and channel over the grid
    torch.testing.assert_close(out.mean(dim=(1, 2)), torch.zeros(2, DIM), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(dim=(1, 2), unbiased=False), torch.ones(2, DIM), atol=1e-3, rtol=0)


def test_instancenorm_adapter_mixes_tokens_within_an_image_only():
    torch.manual_seed(0)
    adapter = InstanceNormAdapter(DIM)
    x = _feats()
    out = adapter(x)
    x2 = x.clone()
    x2[0, 0, 0] += 5.0
    out2 = adapter(x2)
    assert not torch.allclose(out2[0, 3, 3], out[0, 3, 3])  # another token of the same image moves
    assert torch.equal(out2[1], out[1])  # the other image does not
    with pytest.raises(MoleflowError, match="B, h, w, D"):
        adapter(torch.randn(5, DIM))


def test_make_adapter_kinds():
    assert isinstance(make_adapter("none", DIM), IdentityAdapter)
    assert list(make_adapter("none", DIM).parameters()) == []
    assert isinstance(make_adapter("instancenorm", DIM), InstanceNormAdapter)
    assert isinstance(make_adapter("film", DIM), FiLMAdapter)
    with pytest.raises(MoleflowError, match="unknown adapter 'bn'"):
        make_adapter("bn", DIM)


def _flow(**kw) -> MoLEFlow:
    model = MoLEFlow(DIM, (4, 4), num_coupling_layers=2, **kw)
    model.begin_task(0)
    model.begin_task(1)
    return model


def test_task0_mix_applies_to_task0_only():
    torch.manual_seed(0)
    model = _flow(adapter="film", task0_mix=0.1)
    feats = _feats()
    x = feats + sinusoidal_2d(4, 4, DIM)
    with torch.no_grad():
        for key in ("0", "1"):  # make the adapters non-trivial and different
            model.adapters[key].mlp[2].weight.normal_()
        expected0 = 0.9 * x + 0.1 * model.adapters["0"](x)
        expected1 = model.adapters["1"](x)
        torch.testing.assert_close(model.adapt(feats, 0), expected0)
        torch.testing.assert_close(model.adapt(feats, 1), expected1)
        assert not torch.allclose(model.adapt(feats, 0), model.adapters["0"](x))


def test_plain_adapter_at_task0_when_mix_is_none_and_identity_when_no_first_adapter():
    torch.manual_seed(0)
    feats = _feats()
    x = feats + sinusoidal_2d(4, 4, DIM)
    plain = _flow(adapter="film", task0_mix=None)
    with torch.no_grad():
        torch.testing.assert_close(plain.adapt(feats, 0), plain.adapters["0"](x))
    v1 = _flow(adapter="instancenorm", adapter_first_task=False)
    assert "0" not in v1.adapters and isinstance(v1.adapters["1"], InstanceNormAdapter)
    with torch.no_grad():
        assert torch.equal(v1.adapt(feats, 0), x)
        torch.testing.assert_close(v1.adapt(feats, 1), F.instance_norm(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


@pytest.mark.parametrize("mix", [None, 0.1])
def test_film_log_det_is_the_log_det_of_its_jacobian(mix):
    """FiLMAdapter.log_det (diagonal + rank 2, determinant lemma) against the numerical Jacobian."""
    torch.manual_seed(0)
    adapter = FiLMAdapter(6, 0).double()
    with torch.no_grad():
        adapter.gamma.copy_(torch.randn(6))
        adapter.beta.copy_(torch.randn(6))
        adapter.gate_logit.fill_(0.7)
    x = torch.randn(6, dtype=torch.double)

    def mapped(v):
        y = adapter(v)
        return y if mix is None else (1 - mix) * v + mix * y

    expected = torch.linalg.slogdet(torch.autograd.functional.jacobian(mapped, x))[1]
    assert abs(expected.item()) > 0.1  # a real volume change is checked
    assert abs(adapter.log_det(x, mix).item() - expected.item()) < 1e-10
    assert adapter.log_det(x.expand(3, 4, 6), mix).shape == (3, 4)


def test_film_log_det_refuses_the_mlp():
    with pytest.raises(MoleflowError, match="--adapter_hidden 0"):
        FiLMAdapter(6, 8).log_det(torch.randn(6))
