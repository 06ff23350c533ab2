"""Figures on labelled real photos, measured by the daemon itself.

Everything here runs `tagd eval --json` on a model folder and a folder of
labelled photos, so the figures include the daemon's own decoding,
conversion and review rules. Nothing measured here feeds back into
training, calibration or thresholds: it runs after the model is final.

The photos are read where they lie; none is copied. A subset (the real dev
split, or only the CC0 photos of a set) is a temporary folder of symbolic
links with its own labels.csv.
"""

import json
import os
import subprocess
import tempfile

from fmnist import real

# Per conversion, the steps it takes (each turned off in the ablation) and
# the steps it leaves out (each turned on), as `tagd eval --without/--with`
# names them; src/preprocess/fmnist.rs has the recipes.
ABLATION = {
    "fmnist-v1": (["area", "sharpen"], ["border", "mask", "blank"]),
    "fmnist-v2": (["border", "mask", "plain", "blank", "area", "sharpen"], ["sides", "garment"]),
    "fmnist-v3": (["border", "mask", "plain", "sides", "garment", "blank", "area"], ["sharpen", "clean", "body"]),
    "fmnist-v4": (["border", "mask", "plain", "sides", "garment", "body", "blank", "area"], ["sharpen", "clean", "stretch"]),
    "fmnist-v5": (["border", "mask", "plain", "sides", "clean", "garment", "body", "blank", "area", "stretch"], ["sharpen"]),
}
# The shorter-edge limit under which the daemon flags `tiny_image`; a
# setting of the daemon, not of the model.
TINY = "tiny_image"


class TagdError(RuntimeError):
    pass


def tagd_eval(tagd, onnxruntime, model_dir, photos_dir, without=None, with_=None, sheet=None, cwd=None):
    """`tagd eval --json` on one folder; `photos_dir` may be relative to `cwd`
    (the contact sheet's title names the folder as given)."""
    tagd, model_dir, onnxruntime = (os.path.abspath(p) for p in (tagd, model_dir, onnxruntime))
    cmd = [tagd, "--model", model_dir, "--onnxruntime", onnxruntime, "eval", photos_dir, "--json",
           "--no-progress"]
    if without:
        cmd += ["--without", without]
    if with_:
        cmd += ["--with", with_]
    if sheet:
        cmd += ["--sheet", os.path.abspath(sheet)]
    # An empty config file: the daemon's built-in defaults, whatever /etc holds.
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as cfg:
        p = subprocess.run(cmd[:1] + ["--config", cfg.name] + cmd[1:], capture_output=True, text=True, cwd=cwd)
    if p.returncode != 0:
        raise TagdError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout)


def summarise(result, labels):
    """The figures kept in metrics.json from one `tagd eval --json` answer."""
    r, photos = result["report"], result["photos"]
    out = {
        "photos": r["photos"], "accuracy": r["accuracy"], "failed": r["failed"],
        "footwear_photos": r["footwear_photos"], "footwear_called_bag": r["footwear_called_bag"],
        "footwear_called_bag_rate": r["footwear_called_bag_rate"],
        "flagged_share": r["flagged_share"], "unflagged_accuracy": r["unflagged_accuracy"],
        "per_class": {pc["label"]: {"photos": pc["photos"], "accuracy": pc["accuracy"]} for pc in r["per_class"]},
        "confusion": r["confusion"],
    }
    # The same review figures without the `tiny_image` reason: what the model's
    # thresholds do, apart from the daemon's photo-size rule.
    reasons = {}
    kept_ok = kept = 0
    for ph in photos:
        rs = [x for x in (ph.get("review_reason") or "").split(",") if x]
        for x in rs:
            reasons[x] = reasons.get(x, 0) + 1
        flagged = bool([x for x in rs if x != TINY]) or ph.get("error") is not None
        if not flagged:
            kept += 1
            kept_ok += int(ph["predicted"] in ph["accepted"])
    out["review_reasons"] = reasons
    out["flagged_share_without_tiny"] = 1 - kept / len(photos) if photos else None
    out["unflagged_accuracy_without_tiny"] = kept_ok / kept if kept else None
    # Predicted-class histogram, for the footwear and Bag discussion.
    counts = [0] * len(labels)
    for ph in photos:
        if ph["predicted"] is not None:
            counts[ph["predicted"]] += 1
    out["predicted_counts"] = counts
    return out


def shrink_png(path):
    """Re-encode a contact sheet with a 256-colour palette: about a third of
    the bytes, for a file that is committed."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def subset_folder(src_dir, labels_csv, keep, dst_dir):
    """A folder of links to the photos of `src_dir` whose labels.csv row
    passes `keep(row)`, with their rows as its own labels.csv."""
    rows = real.read_labels_csv(labels_csv)
    os.makedirs(dst_dir, exist_ok=True)
    lines = ["file,fmnist_labels,source_label"]
    n = 0
    for r in rows:
        if not keep(r):
            continue
        os.symlink(os.path.abspath(os.path.join(src_dir, r["file"])), os.path.join(dst_dir, r["file"]))
        lines.append(f"{r['file']},{r['cell']},{r['source']}")
        n += 1
    with open(os.path.join(dst_dir, "labels.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return n


def measure(tagd, onnxruntime, models, sets, labels, shipped, ablate=("product", "wild"), sheet=None,
            preprocessing="fmnist-v4", log=print):
    """Every model on every set; the shipped model once more per set in
    `ablate` with each step of its `preprocessing` turned off and each step
    it leaves out turned on; and the contact sheet.

    models: {name: model folder}; sets: {name: photo folder}; shipped: the
    name in `models` that ships; sheet: (set folder, keep(row), png path,
    the subset's folder name for the sheet's title) or None. Returns the dict stored as metrics["real_photos"]["tagd"].
    """
    out = {"sets": {s: {"photos": None} for s in sets}, "models": {}, "ablation": {}}
    for name, mdir in models.items():
        out["models"][name] = {}
        for s, sdir in sets.items():
            res = summarise(tagd_eval(tagd, onnxruntime, mdir, sdir), labels)
            out["models"][name][s] = res
            out["sets"][s]["photos"] = res["photos"]
            log(f"real photos: {name} on {s}: accuracy {res['accuracy']:.3f}, footwear called Bag "
                f"{res['footwear_called_bag_rate'] or 0:.3f}, flagged {res['flagged_share']:.3f}")
    for s in ablate:
        if s not in sets:
            continue
        out["ablation"][s] = {"all steps": {k: out["models"][shipped][s][k]
                                            for k in ("accuracy", "footwear_called_bag_rate")}}
        steps_on, steps_off = ABLATION[preprocessing]
        for flag, steps in (("without", steps_on), ("with", steps_off)):
            for step in steps:
                toggle = {"without": step} if flag == "without" else {"with_": step}
                res = summarise(tagd_eval(tagd, onnxruntime, models[shipped], sets[s], **toggle), labels)
                out["ablation"][s][f"{flag} {step}"] = {k: res[k] for k in ("accuracy", "footwear_called_bag_rate")}
    if sheet:
        src, keep, png, name = sheet
        with tempfile.TemporaryDirectory() as tmp:
            n = subset_folder(src, os.path.join(src, "labels.csv"), keep, os.path.join(tmp, name))
            res = summarise(tagd_eval(tagd, onnxruntime, models[shipped], name, sheet=png, cwd=tmp), labels)
        shrink_png(png)
        out["sheet"] = {"file": os.path.basename(png), "photos": n, "mistakes": n - round(res["accuracy"] * n)}
    return out
