"""Anomaly scores of patch embeddings against a task's memory of normal embeddings."""

from __future__ import annotations

import torch
from sklearn.covariance import LedoitWolf

QUERY_CHUNK = 4096  # bounds the (queries x memory) distance matrix to ~32 MB at memory=2000


def subsample(rows: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """At most `limit` rows, drawn without replacement by a generator seeded with `seed`."""
    if rows.shape[0] <= limit:
        return rows
    pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))[:limit]
    return rows[pick.sort().values.to(rows.device)]


def knn_distance(queries: torch.Tensor, memory: torch.Tensor, k: int) -> torch.Tensor:
    """(P,) mean Euclidean distance of each query (P,d) to its k nearest rows of memory (M,d)."""
    k = min(k, memory.shape[0])
    return torch.cat([
        torch.cdist(chunk, memory).topk(k, dim=1, largest=False).values.mean(1)
        for chunk in queries.split(QUERY_CHUNK)
    ])


def mahalanobis_stats(memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and precision (d,d) of the memory; Ledoit-Wolf shrinkage keeps the covariance
    invertible although L2-normalised embeddings lie on a sphere (rank-deficient by one)."""
    fit = LedoitWolf().fit(memory.detach().double().cpu().numpy())
    to = dict(dtype=memory.dtype, device=memory.device)
    return torch.as_tensor(fit.location_, **to), torch.as_tensor(fit.precision_, **to)


def mahalanobis_distance(queries: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(P,) sqrt((q - mean)^T precision (q - mean)) for each query row."""
    diff = queries - mean
    return ((diff @ precision) * diff).sum(1).clamp_min(0).sqrt()
