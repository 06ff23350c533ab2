"""Consistency of what is committed: the manifest, the ONNX file, the fixtures.

Cheap (one small ONNX session, 12 images); skipped before the first full run.
"""

import json
import os
import tomllib

import numpy as np
import pytest

import train
from fmnist import calibrate, data, export

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_DIR = os.path.join(ROOT, "models", "fashion-mnist")
FIX_DIR = os.path.join(ROOT, "tests", "fixtures", "fmnist")

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(MODEL_DIR, "model.toml")),
                                reason="no trained model yet (make -C training train)")


@pytest.fixture(scope="module")
def manifest():
    with open(os.path.join(MODEL_DIR, "model.toml"), "rb") as f:
        return tomllib.load(f)


def test_manifest_matches_the_onnx_file(manifest):
    assert manifest["sha256"] == export.file_sha256(os.path.join(MODEL_DIR, manifest["onnx_file"]))
    assert manifest["labels"] == data.LABELS
    assert 0 < manifest["calibration"]["temperature"] < 10
    assert 0 <= manifest["review"]["min_confidence"] < 1
    assert 0 <= manifest["review"]["min_margin"] < 1


def test_fixtures_match_the_model(manifest):
    with open(os.path.join(FIX_DIR, "expected.json")) as f:
        expected = json.load(f)
    assert expected["model_sha256"] == manifest["sha256"]
    assert len(expected["images"]) == 12
    sess = export.session(os.path.join(MODEL_DIR, manifest["onnx_file"]))
    mean, std = np.float32(manifest["input"]["mean"]), np.float32(manifest["input"]["std"])
    for item in expected["images"]:
        px = train.read_png_gray(os.path.join(FIX_DIR, item["file"])).astype(np.float32) / np.float32(255)
        x = ((px - mean) / std).reshape(1, 1, 28, 28)
        probs = calibrate.softmax(export.ort_logits(sess, x), manifest["calibration"]["temperature"])[0]
        assert int(probs.argmax()) == item["predicted"], item["file"]
        assert data.LABELS[item["predicted"]] == item["predicted_name"]
        np.testing.assert_allclose(probs, item["probabilities"], atol=1e-5, err_msg=item["file"])


@pytest.fixture(scope="module")
def metrics():
    with open(os.path.join(MODEL_DIR, "metrics.json")) as f:
        return json.load(f)


def test_card_is_generated_from_the_metrics(tmp_path, metrics):
    from fmnist import report
    report.write_card(metrics, str(tmp_path))
    with open(os.path.join(MODEL_DIR, "MODEL_CARD.md")) as f:
        assert (tmp_path / "MODEL_CARD.md").read_text() == f.read(), "MODEL_CARD.md differs from metrics.json"


def test_manifest_agrees_with_the_metrics(manifest, metrics):
    assert manifest["preprocessing"] == metrics["preprocessing"].get("name", "fmnist-v1")
    assert manifest["calibration"]["temperature"] == pytest.approx(metrics["calibration"]["temperature"])
    assert manifest["review"]["min_confidence_per_class"] == pytest.approx(metrics["review"].get("per_class", {}))
    assert manifest["sha256"] == metrics["export"]["sha256"]


def test_scene_rule_agrees_with_the_metrics(manifest, metrics):
    scene = metrics["review"].get("scene")
    assert manifest["review"].get("scene") == (None if scene is None else pytest.approx(
        {"min_confidence": scene["min_confidence"], "min_margin": scene["min_margin"]}))
