"""Moves the model that ships to a new conversion without training it again.

A conversion step that only touches photos the model never learnt from
(a person on a studio backdrop, say) leaves the weights, the temperature
and the review thresholds as valid as they were: every input they were
fitted on is the same. What changes is every figure on real photos. This
checks the first claim and redoes the second:

1. both conversions run over the real training photos (`tagd convert`), and
   the move is refused unless every 28x28 image is the same, byte for byte;
2. the manifest and metrics.json take the new conversion's name;
3. `tagd eval` measures the model on the labelled sets again (product,
   wild, the dev split of the training photos), with the ablation and the
   contact sheet, and those figures replace the model's in metrics.json;
   the other columns (the nets compared with it) keep the figures of the
   training run, and the card says so;
4. the model card is written again from metrics.json.

    python -m fmnist.remeasure --model ../models/fashion-mnist --preprocessing fmnist-v4 \\
        --tagd ../target/release/tagd --onnxruntime ../.ort/libonnxruntime.so.1.31.1 \\
        --real-photos DIR --eval-photos DIR
"""

import argparse
import filecmp
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from fmnist import data, realeval, report


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the model folder that ships (model.toml, metrics.json)")
    p.add_argument("--preprocessing", required=True, choices=list(realeval.ABLATION))
    p.add_argument("--tagd", required=True, help="a tagd binary that implements both conversions")
    p.add_argument("--onnxruntime", required=True, help="libonnxruntime.so.1.31.1")
    p.add_argument("--real-photos", required=True,
                   help="the real training photos (with labels.csv) the model was fine-tuned on")
    p.add_argument("--eval-photos", default=None, help="the folder holding product/ and wild/")
    return p.parse_args(argv)


def convert(tagd, photos, preprocessing, out):
    """`tagd convert` of a folder, with the built-in defaults (an empty config)."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as cfg:
        cmd = [tagd, "--config", cfg.name, "convert", photos, "--out", out, "--preprocessing", preprocessing]
        p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")


def differing_conversions(tagd, photos, old, new):
    """The photos whose 28x28 image differs between the two conversions."""
    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, old), os.path.join(tmp, new)
        convert(tagd, photos, old, a)
        convert(tagd, photos, new, b)
        names = sorted(n for n in os.listdir(a) if n.endswith(".png"))
        if sorted(n for n in os.listdir(b) if n.endswith(".png")) != names:
            raise SystemExit(f"{old} and {new} converted different sets of photos from {photos}")
        _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return sorted(mismatch + errors)


def set_manifest_preprocessing(path, preprocessing):
    with open(path) as f:
        text = f.read()
    text, n = re.subn(r'^preprocessing = "[^"]*"', f'preprocessing = "{preprocessing}"', text, flags=re.M)
    if n != 1:
        raise SystemExit(f"{path}: no single `preprocessing = ...` line to change")
    with open(path, "w") as f:
        f.write(text)


def measure_shipped(args, metrics, tmp):
    """tagd's figures for the model folder alone, on the sets the training run measured."""
    sets = {}
    if args.eval_photos:
        sets = {s: os.path.join(args.eval_photos, s) for s in ("product", "wild")
                if os.path.isdir(os.path.join(args.eval_photos, s))}
    dev_files = set(metrics["real_photos"]["dev_files"])
    sets["dev"] = os.path.join(tmp, "dev-photos")
    realeval.subset_folder(args.real_photos, os.path.join(args.real_photos, "labels.csv"),
                           lambda r: r["file"] in dev_files, sets["dev"])
    sheet = None
    if "wild" in sets:
        # Only the CC0 photos (source_label `label=...`) may be drawn into a committed file.
        sheet = (sets["wild"], lambda r: r["source"].startswith("label="),
                 os.path.join(args.model, "real-mistakes.png"), "wild-cc0")
    return realeval.measure(args.tagd, args.onnxruntime, {"ships": args.model}, sets, data.LABELS, "ships",
                            preprocessing=args.preprocessing, sheet=sheet, log=print)


def main(argv=None):
    args = parse_args(argv)
    metrics_path = os.path.join(args.model, "metrics.json")
    with open(metrics_path) as f:
        metrics = json.load(f)
    old = metrics["preprocessing"].get("name", "fmnist-v1")
    if old == args.preprocessing:
        raise SystemExit(f"{args.model} already ships with {old}")

    t0 = time.time()
    differ = differing_conversions(args.tagd, args.real_photos, old, args.preprocessing)
    if differ:
        raise SystemExit(f"{len(differ)} of the training photos convert differently with {args.preprocessing} "
                         f"than with {old} (first: {differ[0]}): the model must be trained again")
    print(f"the training photos convert to the same images with {old} and {args.preprocessing}")

    set_manifest_preprocessing(os.path.join(args.model, "model.toml"), args.preprocessing)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = measure_shipped(args, metrics, tmp)

    tagd = metrics["real_photos"]["tagd"]
    tagd["models"]["ships"] = fresh["models"]["ships"]
    for key in ("ablation", "sheet"):
        tagd[key] = fresh.get(key)
    tagd["remeasured"] = {
        "from": old,
        "to": args.preprocessing,
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": round(time.time() - t0, 1),
        "command": f"python -m fmnist.remeasure --preprocessing {args.preprocessing}",
    }
    metrics["preprocessing"]["name"] = args.preprocessing
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=1)
        f.write("\n")
    report.write_card(metrics, args.model)
    print(f"{args.model}: now {args.preprocessing}; figures and card written ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
