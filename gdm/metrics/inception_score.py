"""Inception Score as the paper computes it (ADM evaluator, Salimans et al. 2016).

    IS = exp( E_x KL( p(y|x) || p(y) ) ),   p(y) = mean of p(y|x) over the split

The N predictions are cut into CONSECUTIVE, UNSHUFFLED splits of `split_size` (5000 in the paper):
rows [0, 5000), [5000, 10000), ...; a final shorter remainder forms its own split, and N < 5000
gives a single split. We return the mean and the standard deviation over the splits (the paper
reports the mean; std is 0 with one split). torch-fidelity's `isc_features_to_metric` shuffles
and uses 10 splits, so it is not used here.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax, xlogy

from gdm.errors import GdmError


def _as_probs(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "auto":
        is_probs = bool(np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-4))
        kind = "probs" if is_probs else "logits"
    if kind == "logits":
        return softmax(x, axis=1)  # pool_3 @ W (no bias), softmax over 1008 classes
    if kind == "probs":
        return x
    raise GdmError(f"inception_score: kind must be 'auto', 'logits' or 'probs', got {kind!r}")


def inception_score(
    logits_or_probs: np.ndarray, split_size: int = 5000, *, kind: str = "auto"
) -> tuple[float, float]:
    """(mean, std) of the Inception Score over consecutive splits of `split_size` rows.

    `kind="auto"` treats the input as probabilities when every row is non-negative and sums to 1,
    else as logits.
    """
    x = np.asarray(logits_or_probs, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise GdmError(f"inception_score needs an N x K array, got shape {x.shape}")
    if split_size < 1:
        raise GdmError(f"inception_score: split_size must be >= 1, got {split_size}")
    p_yx = _as_probs(x, kind)
    scores = []
    for start in range(0, p_yx.shape[0], split_size):
        part = p_yx[start : start + split_size]
        p_y = part.mean(axis=0, keepdims=True)
        # KL(p(y|x) || p(y)) per row; xlogy gives 0 * log 0 = 0 for one-hot predictions.
        kl = (xlogy(part, part) - xlogy(part, p_y)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
