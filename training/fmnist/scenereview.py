"""The review rule for photos cut out of a scene.

tagd converts a studio shot (a plain backdrop) and a photo of a garment on a
floor, a bed or a hanger differently, and the model is wrong on the second
kind far more often. One review rule cannot serve both: a rule strict enough
to catch the errors on Fashion-MNIST-like input flags close to half of the
phone photos. So the manifest carries a second pair, `[review.scene]`, which
the daemon applies to every photo it had to cut out of a scene.

That pair is chosen here on the real dev photos alone (never on the photos a
model is measured on), as the daemon sees them: `tagd eval --json` gives each
photo's calibrated probabilities and whether it was a scene photo.

    python -m fmnist.scenereview --model ../models/fashion-mnist \\
        --real-photos /path/to/clothing-train --tagd ../target/release/tagd \\
        --onnxruntime ../.ort/libonnxruntime.so.1.31.1

rewrites the model folder's `[review.scene]` table and the `review.scene`
entry of its metrics.json; the dev photos are the ones metrics.json lists.
With `--eval-photos DIR` (holding product/ and wild/) it then measures the
model again with tagd on those sets and on the dev photos, and replaces the
shipped model's figures in metrics.json, so that the card tells what the
new rule does. `train.py` calls `fit` itself when it has real photos.
"""

import argparse
import json
import os
import re
import tempfile

import numpy as np

from fmnist import data, realeval
from fmnist.calibrate import CONF_GRID, MARGIN_GRID
from fmnist.realcal import review_stats_sets


def scene_photos(result, n_classes):
    """Probabilities [N, C] and acceptable-class masks [N, C] of the scene
    photos in one `tagd eval --json` answer (photos tagd could not read are
    left out: they carry no probabilities)."""
    photos = [p for p in result["photos"] if p.get("scene") and p.get("probabilities") is not None]
    probs = np.array([p["probabilities"] for p in photos], dtype=np.float64).reshape(-1, n_classes)
    accept = np.zeros((len(photos), n_classes), dtype=bool)
    for i, p in enumerate(photos):
        accept[i, p["accepted"]] = True
    return probs, accept


def choose(probs, accept, max_flagged):
    """The (min_confidence, min_margin) pair that catches the largest share
    of the errors while flagging at most `max_flagged` of the photos (ties:
    fewer flagged). Catching more errors at a given flagged share is the same
    as a higher accuracy on the photos left unflagged."""
    if len(probs) == 0:
        raise ValueError("no scene photos to choose a review rule on")
    candidates = [review_stats_sets(probs, accept, c, m) for c in CONF_GRID for m in MARGIN_GRID]
    within = [r for r in candidates if r["flagged"] <= max_flagged + 1e-12]
    if not within:
        raise ValueError(f"no threshold pair flags at most {max_flagged:.0%} of the scene photos")
    return max(within, key=lambda r: (r["errors_caught"] or 0, -r["flagged"]))


def write_scene_table(model_toml, pair):
    """Puts `[review.scene]` with the pair into the manifest, replacing the
    table if there is one; the rest of the file is left as it is."""
    with open(model_toml) as f:
        text = f.read()
    table = (f"[review.scene]                       # photos cut out of a scene (not a plain backdrop)\n"
             f"min_confidence = {pair['min_confidence']:.2f}\n"
             f"min_margin = {pair['min_margin']:.2f}\n")
    text = re.sub(r"\n\[review\.scene\][^\[]*", "\n", text).rstrip("\n") + "\n\n" + table
    with open(model_toml, "w") as f:
        f.write(text)


def fit(model_dir, dev_dir, tagd, onnxruntime, max_flagged, n_classes=10):
    """Chooses the scene rule on the photos of `dev_dir` with the model as it
    stands (any old scene rule does not change the probabilities), writes it
    into model.toml and returns what metrics.json keeps about it."""
    result = realeval.tagd_eval(tagd, onnxruntime, model_dir, dev_dir)
    probs, accept = scene_photos(result, n_classes)
    chosen = choose(probs, accept, max_flagged)
    write_scene_table(os.path.join(model_dir, "model.toml"), chosen)
    return {"min_confidence": chosen["min_confidence"], "min_margin": chosen["min_margin"],
            "budget_real_dev": max_flagged, "dev_photos": len(result["photos"]), "scene_photos": len(probs),
            "chosen_on_real_dev": chosen}


def remeasure(metrics, args, sets):
    """The shipped model's tagd figures on `sets`, as train.py records them."""
    ships = metrics["real_photos"]["tagd"]["models"]["ships"]
    for name, folder in sets.items():
        result = realeval.tagd_eval(args.tagd, args.onnxruntime, args.model, folder)
        ships[name] = realeval.summarise(result, data.LABELS)
        print(f"{name}: accuracy {ships[name]['accuracy']:.1%}, flagged {ships[name]['flagged_share']:.1%}, "
              f"accuracy on the rest {ships[name]['unflagged_accuracy']:.1%}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder with model.toml and metrics.json")
    p.add_argument("--real-photos", required=True, help="the labelled real photos the dev split was drawn from")
    p.add_argument("--tagd", required=True)
    p.add_argument("--onnxruntime", required=True)
    p.add_argument("--eval-photos", help="a folder holding product/ and wild/, measured again afterwards")
    p.add_argument("--budget", type=float, default=None,
                   help="largest share of the dev scene photos flagged (default: the run's real-photo budget)")
    args = p.parse_args(argv)

    metrics_path = os.path.join(args.model, "metrics.json")
    with open(metrics_path) as f:
        metrics = json.load(f)
    dev_files = set(metrics["real_photos"]["dev_files"])
    budget = args.budget if args.budget is not None else metrics["args"]["review_budget_real"]

    with tempfile.TemporaryDirectory() as tmp:
        dev_dir = os.path.join(tmp, "dev-photos")
        labels_csv = os.path.join(args.real_photos, "labels.csv")
        realeval.subset_folder(args.real_photos, labels_csv, lambda r: r["file"] in dev_files, dev_dir)
        scene = fit(args.model, dev_dir, args.tagd, args.onnxruntime, budget)
        if args.eval_photos:
            remeasure(metrics, args, {"product": os.path.join(args.eval_photos, "product"),
                                      "wild": os.path.join(args.eval_photos, "wild"), "dev": dev_dir})

    # Said on the card: this rule came after training, and only the shipped
    # model's figures were measured again with it.
    metrics["review"]["scene"] = {**scene, "added_after_training": True}
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=1)
        f.write("\n")
    c = scene["chosen_on_real_dev"]
    print(f"[review.scene] min_confidence {scene['min_confidence']:.2f}, min_margin {scene['min_margin']:.2f}: "
          f"{scene['scene_photos']} dev scene photos, flagged {c['flagged']:.1%}, errors caught "
          f"{c['errors_caught']:.1%}, accuracy on the rest {c['accuracy_unflagged']:.1%}")


if __name__ == "__main__":
    main()
