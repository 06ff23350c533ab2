import tomllib

import numpy as np
import pytest

import train
from fmnist import calibrate, realcal, scenereview


def tagd_answer(probs, accepted, scene):
    return {"photos": [{"file": f"{i}.jpg", "probabilities": p.tolist(), "accepted": a, "scene": s}
                       for i, (p, a, s) in enumerate(zip(probs, accepted, scene))]
            + [{"file": "bad.jpg", "probabilities": None, "accepted": [0], "scene": None}]}


def test_only_scene_photos_are_taken_from_a_tagd_answer():
    probs = np.eye(10)[[1, 2, 3]]
    probs, accept = scenereview.scene_photos(tagd_answer(probs, [[1], [0, 2], [5]], [True, False, True]), 10)
    assert probs.shape == (2, 10)
    assert accept[0, 1] and accept[1, 5] and accept.sum() == 2


def test_the_rule_catches_most_errors_within_the_budget():
    rng = np.random.default_rng(0)
    probs = calibrate.softmax(rng.normal(size=(800, 10)) * 2.0)
    accept = realcal.as_accept(np.array([rng.choice(10, p=row) for row in probs]))
    chosen = scenereview.choose(probs, accept, 0.3)
    assert chosen["flagged"] <= 0.3

    # No pair within the budget catches more errors.
    grid = [realcal.review_stats_sets(probs, accept, c, m)
            for c in calibrate.CONF_GRID for m in calibrate.MARGIN_GRID]
    best = max(r["errors_caught"] for r in grid if r["flagged"] <= 0.3)
    assert chosen["errors_caught"] == pytest.approx(best)
    assert scenereview.choose(probs, accept, 0.6)["errors_caught"] >= chosen["errors_caught"]


def test_no_scene_photos_is_an_error():
    with pytest.raises(ValueError, match="no scene photos"):
        scenereview.choose(np.zeros((0, 10)), np.zeros((0, 10), dtype=bool), 0.3)


def test_the_scene_table_is_added_once_and_replaced(tmp_path):
    p = tmp_path / "model.toml"
    train.write_model_toml(p, "cd" * 32, 0.8, 0.3, 0.5, "3", "fmnist-v3", {8: 0.75})
    scenereview.write_scene_table(p, {"min_confidence": 0.6, "min_margin": 0.1})
    scenereview.write_scene_table(p, {"min_confidence": 0.66, "min_margin": 0.0})
    t = tomllib.loads(p.read_text())
    assert t["review"]["scene"] == {"min_confidence": 0.66, "min_margin": 0.0}
    assert t["review"]["min_confidence"] == 0.3 and t["review"]["min_confidence_per_class"] == {"Bag": 0.75}
    assert p.read_text().count("[review.scene]") == 1
