"""Where supervised losses find their ground truth (targets, masks).

Ground truth is data, not a model output, so it normally comes with the batch: `batch[key]`. The
continual trainer currently calls losses with the outputs only, so a model (or a wrapper) may instead
forward the ground truth as `outputs[key]`; the batch wins when both are present. Because either place
is valid, the key is not part of a loss's `reads` (CompositeLoss checks those against the outputs only);
its absence is reported here, naming the loss and both places.
"""

from __future__ import annotations

import torch

from moleflow.errors import MoleflowError


def ground_truth(outputs: dict, batch: dict | None, key: str, loss: str, like: torch.Tensor) -> torch.Tensor:
    """`batch[key]` (else `outputs[key]`) as a float tensor of `like`'s dtype/device, checked to lie in [0, 1]."""
    if batch is not None and key in batch:
        value = batch[key]
    elif key in outputs:
        value = outputs[key]
    else:
        where = "no batch was passed" if batch is None else f"the batch has: {', '.join(sorted(batch)) or 'nothing'}"
        raise MoleflowError(f"loss '{loss}' needs ground truth '{key}' in the batch or the model outputs, but "
                            f"{where} and the outputs have: {', '.join(sorted(outputs))}; pass batch['{key}']")
    value = torch.as_tensor(value).to(device=like.device, dtype=like.dtype)
    if value.numel() and (torch.isnan(value).any() or value.min() < 0 or value.max() > 1):
        raise MoleflowError(f"loss '{loss}': '{key}' must lie in [0, 1] (1 = anomalous), "
                            f"got values in [{value.min().item()}, {value.max().item()}]")
    return value


def same_shape(pred: torch.Tensor, truth: torch.Tensor, pred_name: str, truth_name: str, loss: str) -> torch.Tensor:
    """`truth` viewed as `pred`'s shape when they hold the same number of elements, else a clear error."""
    if truth.shape == pred.shape:
        return truth
    if truth.numel() == pred.numel() and truth.squeeze().shape == pred.squeeze().shape:
        return truth.reshape(pred.shape)  # e.g. (B, 1, H, W) masks against a (B, H, W) map
    raise MoleflowError(f"loss '{loss}': {truth_name} {tuple(truth.shape)} does not match {pred_name} "
                        f"{tuple(pred.shape)}; pass one {truth_name} value per {pred_name} value (resize if needed)")
