"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018; DINO's ``eval_knn``).

Features are l2-normalised, neighbours are ranked by cosine similarity, and each of the ``k``
neighbours votes for its class with weight ``exp(sim / T)``. The votes are normalised to sum to one,
so the scores double as class probabilities (for AUROC). Test rows are processed in chunks so the
(test x train) similarity matrix never has to fit in memory at once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = np.ndarray | torch.Tensor


def _tensor(x: ArrayLike, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x
    return t if dtype is None else t.to(dtype)


def knn_predict(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    max_chunk_values: int = 1 << 25,
) -> tuple[ArrayLike, ArrayLike]:
    """Predict classes of ``test_x`` from its ``k`` most cosine-similar training rows, votes weighted by exp(sim/T).

    Returns ``(preds (N,), probs (N, num_classes))``: torch tensors when ``test_x`` is a tensor, NumPy
    arrays otherwise. ``k`` is capped at the number of training rows; ``num_classes`` defaults to
    ``max(train_y) + 1``. Test rows go in chunks of at most ``chunk_size`` rows and at most
    ``max_chunk_values`` similarities, so memory does not grow with the training set.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    as_numpy = not isinstance(test_x, torch.Tensor)
    test = _tensor(test_x, torch.float32)
    device = test.device
    train = _tensor(train_x, torch.float32).to(device)
    labels = _tensor(train_y).to(device=device, dtype=torch.long).view(-1)
    if len(train) == 0:
        raise ValueError("knn_predict needs at least one training row")
    if len(labels) != len(train):
        raise ValueError(f"train_x has {len(train)} rows but train_y has {len(labels)}")
    n_classes = int(num_classes) if num_classes is not None else int(labels.max().item()) + 1
    kk = min(int(k), len(train))
    train = F.normalize(train, dim=1)
    preds, probs = [], []
    # a chunk's (chunk x train) similarities stay under max_chunk_values floats (128 MiB) however large the set
    chunk_size = max(1, min(int(chunk_size), int(max_chunk_values) // max(1, len(train))))
    for start in range(0, len(test), chunk_size):
        chunk = F.normalize(test[start : start + chunk_size], dim=1)
        sims, idx = (chunk @ train.T).topk(kk, dim=1, largest=True, sorted=True)
        # exp(sim/T), shifted by the row's top similarity for stability: the shift cancels on normalising.
        weights = ((sims - sims[:, :1]) / temperature).exp()
        votes = torch.zeros(len(chunk), n_classes, device=device, dtype=torch.float32)
        votes.scatter_add_(1, labels[idx], weights)
        votes = votes / votes.sum(dim=1, keepdim=True)
        probs.append(votes)
        preds.append(votes.argmax(dim=1))
    if preds:
        pred_t, prob_t = torch.cat(preds), torch.cat(probs)
    else:
        pred_t = torch.zeros(0, dtype=torch.long, device=device)
        prob_t = torch.zeros(0, n_classes, device=device)
    if as_numpy:
        return pred_t.cpu().numpy(), prob_t.cpu().numpy()
    return pred_t, prob_t
