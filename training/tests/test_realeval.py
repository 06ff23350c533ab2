"""realeval drives the tagd binary: these tests run the real one, built by
`cargo build` (the project's `make test` builds it before the training
tests), on the fixture photos with the shipped model."""

import os
import tomllib

import pytest

from fmnist import data, realeval

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TAGD = os.path.join(ROOT, "target", "debug", "tagd")
ORT = os.path.join(ROOT, ".ort", "libonnxruntime.so.1.31.1")
MODEL_DIR = os.path.join(ROOT, "models", "fashion-mnist")
PHOTOS = os.path.join(ROOT, "tests", "fixtures", "photos")

missing = [p for p in (TAGD, ORT) if not os.path.exists(p)]
if missing and os.environ.get("CI"):
    raise RuntimeError(f"CI needs {missing}: run the project's `make test`, which builds them first")
pytestmark = pytest.mark.skipif(bool(missing), reason=f"not built yet: {missing} (run `make test` at the top)")


def labelled_photos(folder):
    os.makedirs(folder)
    rows = ["file,fmnist_labels,source_label", "shoes.jpg,5|7|9,label=Shoes", "t-shirt.jpg,0,label=T-Shirt",
            "pants.jpg,1,label=Pants", "dress.jpg,3,label=Dress"]
    for row in rows[1:]:
        name = row.split(",")[0]
        os.symlink(os.path.join(PHOTOS, name), os.path.join(folder, name))
    with open(os.path.join(folder, "labels.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return folder


def test_measure_runs_every_model_and_the_ablation_of_the_shipped_conversion(tmp_path):
    with open(os.path.join(MODEL_DIR, "model.toml"), "rb") as f:
        preprocessing = tomllib.load(f)["preprocessing"]
    photos = labelled_photos(str(tmp_path / "photos"))

    out = realeval.measure(TAGD, ORT, {"ships": MODEL_DIR}, {"wild": photos}, data.LABELS, "ships",
                           ablate=("wild",), preprocessing=preprocessing, log=lambda msg: None)

    result = out["models"]["ships"]["wild"]
    assert result["photos"] == 4 and out["sets"]["wild"]["photos"] == 4
    assert result["footwear_photos"] == 1
    steps_on, steps_off = realeval.ABLATION[preprocessing]
    expected = ["all steps"] + [f"without {s}" for s in steps_on] + [f"with {s}" for s in steps_off]
    assert list(out["ablation"]["wild"]) == expected
    for row in out["ablation"]["wild"].values():
        assert 0.0 <= row["accuracy"] <= 1.0


def test_a_tagd_failure_is_an_error_with_its_message(tmp_path):
    photos = labelled_photos(str(tmp_path / "photos"))
    with pytest.raises(realeval.TagdError, match="no preprocessing step"):
        realeval.tagd_eval(TAGD, ORT, MODEL_DIR, photos, without="glow")
