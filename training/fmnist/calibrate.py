"""Temperature scaling, calibration error and the review thresholds.

All functions take logits or probabilities as numpy arrays or tensors and
labels as integer arrays; nothing here knows about the model.
"""

import numpy as np
import torch
import torch.nn.functional as F


def softmax(logits, temperature=1.0):
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits, labels, max_iter=200):
    """The T > 0 that minimises the NLL of softmax(logits / T).

    Optimised in log T so it cannot go negative; one scalar, so LBFGS
    converges in a handful of steps.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def nll(logits, labels, temperature=1.0):
    p = softmax(logits, temperature)
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())


def reliability(probs, labels, n_bins=15):
    """Per equal-width confidence bin: count, mean confidence, accuracy."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 cannot
    # happen with softmax, so the first bin's open left edge loses nothing.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        m = idx == i
        n = int(m.sum())
        bins.append({
            "lo": float(edges[i]), "hi": float(edges[i + 1]), "count": n,
            "confidence": float(conf[m].mean()) if n else None,
            "accuracy": float(correct[m].mean()) if n else None,
        })
    return bins


def ece(probs, labels, n_bins=15):
    """Expected calibration error: sum over bins of |accuracy - confidence|
    weighted by the share of samples in the bin."""
    n = len(labels)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                     for b in reliability(probs, labels, n_bins) if b["count"]))


def review_flags(probs, min_confidence, min_margin):
    """True where the daemon would flag the image for a person to look at."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    conf, margin = top2[:, 1], top2[:, 1] - top2[:, 0]
    return (conf < min_confidence) | (margin < min_margin)


def review_stats(probs, labels, min_confidence, min_margin):
    flagged = review_flags(probs, min_confidence, min_margin)
    wrong = probs.argmax(axis=1) != np.asarray(labels)
    kept = ~flagged
    return {
        "min_confidence": float(min_confidence),
        "min_margin": float(min_margin),
        "flagged": float(flagged.mean()),
        "accuracy_unflagged": float((~wrong[kept]).mean()) if kept.any() else None,
        "errors_caught": float((flagged & wrong).sum() / wrong.sum()) if wrong.any() else None,
    }


CONF_GRID = [round(x, 2) for x in np.arange(0.30, 0.96, 0.01)]
MARGIN_GRID = [round(x, 2) for x in np.arange(0.0, 0.81, 0.02)]


def choose_thresholds(probs, labels, max_flagged=0.09):
    """The (min_confidence, min_margin) pair that catches the most errors on
    this split while flagging at most `max_flagged` of the images.

    The budget sits below the 10% target on purpose: it is chosen on the
    validation split and has to hold on data it has not seen.
    """
    top2 = np.sort(probs, axis=1)[:, -2:]
    conf, margin = top2[:, 1], top2[:, 1] - top2[:, 0]
    wrong = probs.argmax(axis=1) != np.asarray(labels)
    best = None
    for c in CONF_GRID:
        low = conf < c
        for m in MARGIN_GRID:
            flagged = low | (margin < m)
            share = flagged.mean()
            if share > max_flagged:
                break   # a larger margin only flags more
            key = ((flagged & wrong).sum(), -share)
            if best is None or key > best[0]:
                best = (key, c, m)
    return review_stats(probs, labels, best[1], best[2])
