import json
import tomllib

import numpy as np
import pytest

import train
from fmnist import calibrate, data, realcal, realeval


def synthetic(n=6000, scale=2.5, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 10)) * 2.0
    p = calibrate.softmax(z)
    labels = np.array([rng.choice(10, p=row) for row in p])
    return z * scale, labels


def test_set_temperature_matches_the_plain_fit_on_single_labels():
    logits, labels = synthetic()
    t_plain = calibrate.fit_temperature(logits, labels)
    t_sets = realcal.fit_temperature_sets([(logits, labels)])
    assert t_sets == pytest.approx(t_plain, rel=1e-3)
    assert t_sets == pytest.approx(2.5, rel=0.1)


def test_each_part_weighs_the_same():
    a, ya = synthetic(4000, scale=2.0, seed=1)
    b, yb = synthetic(400, scale=4.0, seed=2)
    t = realcal.fit_temperature_sets([(a, ya), (b, yb)])
    assert 2.0 < t < 4.0
    # Ten copies of the small part change nothing: it is one part either way.
    t10 = realcal.fit_temperature_sets([(a, ya), (np.tile(b, (10, 1)), np.tile(yb, 10))])
    assert t10 == pytest.approx(t, rel=1e-3)


def test_set_nll_and_ece_with_sets():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    acc = np.array([[True, True, False], [False, False, True]])
    logits = np.log(probs)
    assert realcal.set_nll(logits, acc) == pytest.approx(-(np.log(0.9) + np.log(0.1)) / 2)
    # First right (0 is in its set) at 0.6, second wrong at 0.7.
    assert realcal.ece_sets(probs, acc) == pytest.approx(0.5 * 0.4 + 0.5 * 0.7)


def test_per_class_threshold_follows_the_predicted_class():
    probs = np.array([[0.70, 0.30, 0.0], [0.30, 0.70, 0.0]])
    assert realcal.review_flags_pc(probs, 0.5, 0.0).tolist() == [False, False]
    assert realcal.review_flags_pc(probs, 0.5, 0.0, {1: 0.8}).tolist() == [False, True]
    s = realcal.review_stats_sets(probs, np.array([0, 0]), 0.5, 0.0, {1: 0.8})
    assert s["flagged"] == 0.5 and s["errors_caught"] == 1.0 and s["accuracy_unflagged"] == 1.0


def test_joint_thresholds_keep_both_budgets():
    logits, labels = synthetic(3000, scale=1.0)
    p = calibrate.softmax(logits)
    rl, ry = synthetic(600, scale=1.0, seed=3)
    pr = calibrate.softmax(rl)
    acc = realcal.as_accept(ry)
    acc[:100, 0] = True                   # some photos with two acceptable classes
    ch = realcal.choose_thresholds_joint(p, labels, pr, acc, 0.10, 0.30, rounds=1)
    assert ch["fmnist_val"]["flagged"] <= 0.10 and ch["real_dev"]["flagged"] <= 0.30
    again = realcal.review_stats_sets(pr, acc, ch["min_confidence"], ch["min_margin"], ch["per_class"])
    assert again["flagged"] == pytest.approx(ch["real_dev"]["flagged"])
    glob = realcal.choose_thresholds_joint(p, labels, pr, acc, 0.10, 0.30, per_class=False)
    mean = lambda c: (c["fmnist_val"]["errors_caught"] + c["real_dev"]["errors_caught"]) / 2
    assert mean(ch) >= mean(glob) and glob["per_class"] == {}


def test_joint_thresholds_keep_the_fashion_mnist_floor():
    logits, labels = synthetic(3000, scale=1.0)
    p = calibrate.softmax(logits)
    rl, ry = synthetic(600, scale=0.3, seed=5)      # photos: far less sure, far more often wrong
    pr = calibrate.softmax(rl)
    acc = realcal.as_accept(ry)
    alone = calibrate.choose_thresholds(p, labels, 0.10)
    ch = realcal.choose_thresholds_joint(p, labels, pr, acc, 0.10, 0.30, rounds=1, fm_slack=0.02)
    assert ch["fmnist_val"]["errors_caught"] >= alone["errors_caught"] - 0.02 - 1e-9
    assert ch["fmnist_floor"] == pytest.approx(alone["errors_caught"] - 0.02)


def test_manifest_with_conversion_and_per_class_thresholds(tmp_path):
    p = tmp_path / "model.toml"
    train.write_model_toml(p, "cd" * 32, 0.8, 0.6, 0.2, "2", "fmnist-v2", {8: 0.75, 6: 0.7})
    t = tomllib.loads(p.read_text())
    assert t["preprocessing"] == "fmnist-v2" and t["version"] == "2"
    assert t["review"]["min_confidence_per_class"] == {"Bag": 0.75, "Shirt": 0.7}


def test_summary_of_a_tagd_answer_sets_tiny_image_aside():
    photos = [
        {"file": "a.jpg", "accepted": [0], "predicted": 0, "needs_review": True, "review_reason": "tiny_image",
         "error": None},
        {"file": "b.jpg", "accepted": [5, 7, 9], "predicted": 8, "needs_review": True,
         "review_reason": "low_confidence,tiny_image", "error": None},
        {"file": "c.jpg", "accepted": [1], "predicted": 3, "needs_review": False, "review_reason": None,
         "error": None},
    ]
    report = {"photos": 3, "accuracy": 1 / 3, "failed": 0, "footwear_photos": 1, "footwear_called_bag": 1,
              "footwear_called_bag_rate": 1.0, "flagged_share": 2 / 3, "unflagged_accuracy": 0.0,
              "per_class": [{"label": l, "photos": 0, "accuracy": None} for l in data.LABELS], "confusion": []}
    s = realeval.summarise({"report": report, "photos": photos}, data.LABELS)
    assert s["flagged_share_without_tiny"] == pytest.approx(1 / 3)
    assert s["unflagged_accuracy_without_tiny"] == pytest.approx(0.5)
    assert s["review_reasons"] == {"tiny_image": 2, "low_confidence": 1}
    assert s["predicted_counts"][8] == 1


def test_subset_folder_links_only_the_kept_rows(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for n in ("a.jpg", "b.jpg"):
        (src / n).write_bytes(b"x")
    (src / "labels.csv").write_text("file,fmnist_labels,source_label\r\na.jpg,0,label=T-Shirt\r\n"
                                    "b.jpg,5|7|9,imagenet=shoe\r\n")
    n = realeval.subset_folder(str(src), str(src / "labels.csv"), lambda r: r["source"].startswith("label="),
                               str(tmp_path / "dst"))
    assert n == 1 and sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["a.jpg", "labels.csv"]
    assert (tmp_path / "dst" / "a.jpg").is_symlink()
    assert (tmp_path / "dst" / "labels.csv").read_text().splitlines()[1] == "a.jpg,0,label=T-Shirt"
