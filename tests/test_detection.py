"""The flow must really detect: trained on normal patch features only, it must score off-manifold
patches higher. Features here are synthetic and informative, so this isolates the flow from the
backbone (the embedded benchmark with a random backbone is a much weaker signal; see README)."""

from __future__ import annotations

import torch
from sklearn.metrics import roc_auc_score

from moleflow.contract import FitContext
from moleflow.flow.model import MoLEFlow
from moleflow.flow.options import MoLEFlowOptions

D, H, W = 16, 4, 4


def normal_feats(n: int, gen: torch.Generator, basis: torch.Tensor) -> torch.Tensor:
    # patches lie near a 4-d subspace, with a position-dependent offset (what pos-embed lets the flow use)
    latent = torch.randn(n, H, W, 4, generator=gen)
    offset = torch.linspace(-1, 1, H * W).reshape(1, H, W, 1) * basis[0]
    return latent @ basis[:4] + offset + 0.05 * torch.randn(n, H, W, D, generator=gen)


def test_flow_scores_off_manifold_patches_higher():
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(D, D, generator=gen))[0].T  # orthonormal rows
    train = normal_feats(64, gen, basis)
    test = normal_feats(32, gen, basis)
    labels = torch.zeros(32, H, W)
    bad = test.clone()
    # anomalies: half the images get 3 patches pushed off the subspace by ~ the normal spread (1.0)
    for i in range(16):
        for _ in range(3):
            r, c = torch.randint(0, H, (2,), generator=gen).tolist()
            bad[i, r, c] += 1.0 * basis[8 + torch.randint(0, 8, (1,), generator=gen).item()]
            labels[i, r, c] = 1
    torch.manual_seed(0)
    # the loop and the loss are the flow's own options: 60 epochs of the plain NLL
    options = MoLEFlowOptions(num_epochs=60, batch_size=16, lr=2e-3, weight_decay=0.0, grad_clip=1.0, loss=["nll=1"])
    model = MoLEFlow(D, (H, W), options, num_coupling_layers=4, adapter="none", task0_lora=False)
    model.begin_task(0)
    model.observe_training_features(0, train)
    context = FitContext(seed=0, device=torch.device("cpu"), label="t", progress=False)
    fit = model.fit_task(0, train, model.trainable_parameters(0), context)
    assert len(fit.epoch_losses) == 60
    assert fit.epoch_losses[-1] < fit.epoch_losses[0] - 0.5  # it learned the density
    model.end_task(0)
    scores = model.patch_scores(bad, 0)
    patch_auroc = roc_auc_score(labels.flatten().numpy(), scores.flatten().numpy())
    image_auroc = roc_auc_score((labels.flatten(1).max(1).values).numpy(), scores.flatten(1).max(1).values.numpy())
    assert patch_auroc > 0.95, patch_auroc
    assert image_auroc > 0.9, image_auroc
