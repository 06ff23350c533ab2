import numpy as np
import pytest

from fmnist import calibrate


def synthetic(n=20000, scale=3.0, seed=0):
    """Labels drawn from softmax(z), so z is calibrated by construction;
    the model reports scale * z, i.e. it is over-confident by `scale`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 10)) * 2.0
    p = calibrate.softmax(z)
    labels = np.array([rng.choice(10, p=row) for row in p])
    return z * scale, labels


def test_temperature_recovers_the_scale():
    logits, labels = synthetic()
    t = calibrate.fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.08)
    assert calibrate.nll(logits, labels, t) < calibrate.nll(logits, labels)


def test_ece_drops_after_scaling():
    logits, labels = synthetic()
    t = calibrate.fit_temperature(logits, labels)
    before = calibrate.ece(calibrate.softmax(logits), labels)
    after = calibrate.ece(calibrate.softmax(logits, t), labels)
    assert before > 0.05 and after < 0.02


def test_ece_on_a_hand_computed_case():
    # Every prediction at 0.9 confidence: all right gives ECE 0.1, 9 in 10 right gives 0.
    probs = np.full((10, 10), 0.1 / 9)
    probs[:, 0] = 0.9
    assert calibrate.ece(probs, np.zeros(10, dtype=int)) == pytest.approx(0.1)
    assert calibrate.ece(probs, np.array([0] * 9 + [1])) == pytest.approx(0.0, abs=1e-12)
    bins = calibrate.reliability(probs, np.zeros(10, dtype=int))
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 10


def test_review_flags_and_threshold_choice():
    probs = np.array([[0.95, 0.05] + [0] * 8,    # confident, right
                      [0.50, 0.45] + [0] * 8,    # small margin, wrong
                      [0.40, 0.30, 0.30] + [0] * 7,  # low confidence, wrong
                      [0.90, 0.10] + [0] * 8])   # confident, right
    labels = np.array([0, 1, 1, 0])
    flags = calibrate.review_flags(probs, min_confidence=0.45, min_margin=0.1)
    assert flags.tolist() == [False, True, True, False]
    s = calibrate.review_stats(probs, labels, 0.45, 0.1)
    assert s["flagged"] == 0.5 and s["errors_caught"] == 1.0 and s["accuracy_unflagged"] == 1.0
    best = calibrate.choose_thresholds(probs, labels, max_flagged=0.5)
    assert best["flagged"] <= 0.5 and best["errors_caught"] == 1.0
