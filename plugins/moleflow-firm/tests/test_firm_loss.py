"""FIRM loss: which pairs are positive, and the value against a plain loop over anchors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moleflow.errors import MoleflowError
from moleflow_firm.loss import FIRMLoss, positive_mask

# samples 0,1: ID class 0; 2,3: ID class 1; 4,5: outliers (label -1)
LABELS = torch.tensor([0, 0, 1, 1, -1, -1])


def test_positive_mask_by_hand():
    # rows/cols 0..5 are view 1 of samples 0..5, rows/cols 6..11 view 2 of the same samples
    class0 = {0, 1, 6, 7}
    class1 = {2, 3, 8, 9}
    expected = torch.zeros(12, 12, dtype=torch.bool)
    for group in (class0, class1):
        for a in group:
            for p in group:
                expected[a, p] = a != p
    for outlier in (4, 5):  # an outlier's only positive is its own other view
        expected[outlier, outlier + 6] = expected[outlier + 6, outlier] = True
    assert torch.equal(positive_mask(LABELS, -1), expected)
    assert positive_mask(LABELS, -1).sum() == 2 * (4 * 3) + 2 * 2  # spelled out: 28 positive pairs


def test_positive_mask_respects_the_outlier_label():
    # with outlier_label 1, class 1 becomes two outliers and -1 an ID class
    mask = positive_mask(LABELS, outlier_label=1)
    assert not mask[2, 3] and mask[2, 8] and mask[4, 5] and mask[4, 11]


def _loop_loss(z1, z2, labels, tau, mode, outlier=-1):
    """Direct transcription of the definition, one anchor at a time, in float64 Python."""
    z = torch.cat([z1, z2]).double()
    b = len(labels)
    lab = list(labels.tolist()) * 2

    def positive(a, p):
        return a != p and (a % b == p % b or (lab[a] == lab[p] and lab[a] != outlier))

    anchors = range(2 * b) if mode == "concat" else range(b)
    losses = []
    for a in anchors:
        cands = [c for c in range(2 * b) if c != a] if mode == "concat" else list(range(b, 2 * b))
        denom = sum(math.exp(float(z[a] @ z[c]) / tau) for c in cands)
        pos = [p for p in cands if positive(a, p)]
        losses.append(-sum(math.log(math.exp(float(z[a] @ z[p]) / tau) / denom) for p in pos) / len(pos))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("mode", ["concat", "pairwise"])
@pytest.mark.parametrize("labels", [LABELS, torch.tensor([0, 0, 0, -1, 0])], ids=["two_classes", "one_class"])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_loss_matches_loop(mode, labels, tau):
    g = torch.Generator().manual_seed(len(labels))
    z1 = F.normalize(torch.randn(len(labels), 5, generator=g), dim=1)
    z2 = F.normalize(torch.randn(len(labels), 5, generator=g), dim=1)
    got = FIRMLoss(tau=tau, mode=mode)({"z1": z1, "z2": z2, "labels": labels})
    assert got.item() == pytest.approx(_loop_loss(z1, z2, labels, tau, mode), rel=1e-5)


def test_loss_falls_when_positives_align():
    labels = torch.tensor([0, 0, -1])
    normal, outlier = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    aligned = torch.stack([normal, normal, outlier])
    scattered = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    loss = FIRMLoss(tau=0.1)
    good = loss({"z1": aligned, "z2": aligned, "labels": labels})
    bad = loss({"z1": scattered, "z2": scattered, "labels": labels})
    assert good < bad
    assert torch.isfinite(FIRMLoss(tau=1e-3)({"z1": aligned, "z2": aligned, "labels": labels}))


def test_gradients_flow_to_both_views():
    z1 = F.normalize(torch.randn(4, 3), dim=1).requires_grad_(True)
    z2 = F.normalize(torch.randn(4, 3), dim=1).requires_grad_(True)
    FIRMLoss(mode="pairwise")({"z1": z1, "z2": z2, "labels": torch.tensor([0, 0, -1, -1])}).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_bad_arguments_are_user_errors():
    with pytest.raises(MoleflowError, match="tau"):
        FIRMLoss(tau=0)
    with pytest.raises(MoleflowError, match="mode"):
        FIRMLoss(mode="both")
    with pytest.raises(MoleflowError, match="labels"):
        FIRMLoss()({"z1": torch.zeros(3, 2), "z2": torch.zeros(3, 2), "labels": torch.zeros(2)})
