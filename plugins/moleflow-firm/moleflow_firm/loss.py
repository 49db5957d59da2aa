"""FIRM: a supervised-contrastive loss in which in-distribution (ID) samples share a class and every
outlier is a class of its own.

Inputs: two views z1, z2 (B,D) of the same B samples, each row L2-normalised (the loss does not
normalise: cosine similarity is the dot product), and labels (B,). Stack the views as
Z = [z1; z2] (2B rows; row i and row i+B are the two views of sample i). Pair (a, p), a != p, is

* positive when a and p are the two views of one sample, or when both are ID samples (label !=
  outlier_label) of the same class — so an ID sample is a positive of every view of every same-class
  sample, while an outlier's only positive is its own other view;
* negative otherwise (every outlier is a negative of everything but its twin).

For an anchor a with candidate set C(a) and positives P(a) ⊆ C(a), with s = <z_a, z_c> / tau:

    loss(a) = - 1/|P(a)| * sum_{p in P(a)} log( exp(s_ap) / sum_{c in C(a)} exp(s_ac) )

and the loss is the mean of loss(a) over the anchors. The two modes differ only in anchors and C(a):

* "concat"   (SupCon, Khosla et al. 2020): anchors are all 2B rows, C(a) = every row but a itself;
* "pairwise" (one-directional InfoNCE style): anchors are the B rows of view 1, C(a) = the B rows of
  view 2 (a's own twin included, so every anchor has at least one positive); view-1 rows are never
  candidates and view-2 rows never anchors.

Every anchor has its twin as a positive, so no anchor is ever without one. One ID class (one-class
anomaly detection) and several ID classes are the same code path.
"""

from __future__ import annotations

import torch

from moleflow.errors import MoleflowError

MODES = ("concat", "pairwise")


def positive_mask(labels: torch.Tensor, outlier_label: int = -1) -> torch.Tensor:
    """(2B,2B) bool: entry [a, p] is True when row p of [z1; z2] is a positive of anchor row a.

    The diagonal (a row with itself) is False: a view is never its own positive."""
    labels = torch.as_tensor(labels).reshape(-1)
    b = labels.numel()
    both = torch.cat([labels, labels])
    sample = torch.arange(b, device=both.device).repeat(2)
    twins = sample[:, None] == sample[None, :]
    same_id_class = (both[:, None] == both[None, :]) & (both != outlier_label)[:, None]
    mask = twins | same_id_class
    mask.fill_diagonal_(False)
    return mask


def _check(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise MoleflowError(f"loss 'firm': z1 and z2 must both be (B,D), got {tuple(z1.shape)} and {tuple(z2.shape)}; "
                            "flatten patches to rows first")
    if labels.reshape(-1).numel() != z1.shape[0]:
        raise MoleflowError(f"loss 'firm': {labels.numel()} labels for {z1.shape[0]} samples; pass one label per row")
    if z1.shape[0] < 1:
        raise MoleflowError("loss 'firm': got an empty batch")


class FIRMLoss:
    """FIRM loss on outputs["z1"], outputs["z2"] (B,D, L2-normalised) and outputs["labels"] (B,)."""

    reads = ("z1", "z2", "labels")

    def __init__(self, tau: float = 0.1, outlier_label: int = -1, mode: str = "concat") -> None:
        if not (isinstance(tau, (int, float)) and tau > 0):
            raise MoleflowError(f"loss 'firm': tau={tau!r} must be a number > 0 (the temperature, e.g. 0.1)")
        if mode not in MODES:
            raise MoleflowError(f"loss 'firm': mode={mode!r} is unknown; use one of {', '.join(MODES)}")
        self.tau = float(tau)
        self.outlier_label = int(outlier_label)
        self.mode = mode

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        z1, z2, labels = outputs["z1"], outputs["z2"], torch.as_tensor(outputs["labels"])
        _check(z1, z2, labels)
        b = z1.shape[0]
        z = torch.cat([z1, z2])
        positives = positive_mask(labels.to(z.device), self.outlier_label)
        logits = z @ z.T / self.tau
        if self.mode == "concat":
            candidates = ~torch.eye(2 * b, dtype=torch.bool, device=z.device)
        else:
            logits, positives = logits[:b, b:], positives[:b, b:]
            candidates = torch.ones(b, b, dtype=torch.bool, device=z.device)
        # log-softmax over the candidates only; logsumexp keeps it finite for small tau
        log_prob = logits - logits.masked_fill(~candidates, float("-inf")).logsumexp(dim=1, keepdim=True)
        per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(1) / positives.sum(1)
        return per_anchor.mean()
