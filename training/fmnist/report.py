"""MODEL_CARD.md and its two figures, written from metrics.json alone.

Every number in the card comes from the run's own metrics, so the card can
be regenerated without training:

    python -m fmnist.report ../models/fashion-mnist/metrics.json
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fmnist import report_real  # noqa: E402


def plots(m, out_dir):
    labels = m["labels"]
    cm = np.array(m["cnn"]["confusion"])
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=100)
    share = cm / cm.sum(axis=1, keepdims=True)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(10):
        for j in range(10):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(10), labels, rotation=45, ha="right")
    ax.set_yticks(range(10), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"CNN on the Fashion-MNIST test set ({m['cnn']['test_acc']:.2%} correct)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "confusion.png"))
    plt.close(fig)

    c = m["calibration"]
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    for key, name, style in (("bins_before", f"raw (ECE {c['ece_before']['test']:.2%})", "o-"),
                             ("bins_after", f"T = {c['temperature']:.4f} (ECE {c['ece_after']['test']:.2%})", "s-")):
        # A bin of one or two images swings between 0 and 1 and hides the
        # shape of the curve; the ECE above still counts every bin.
        b = [x for x in c[key] if x["count"] >= 10]
        ax.plot([x["confidence"] for x in b], [x["accuracy"] for x in b], style, ms=4, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean top-1 probability in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_title("CNN reliability on the test set, 15 bins\n(bins with fewer than 10 images not drawn)",
                 fontsize=11)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "reliability.png"))
    plt.close(fig)


def pct(x, digits=2):
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def fmt_int(n):
    return f"{n:,}"


def scene_rule(scene):
    """The paragraph on `[review.scene]`, the rule for photos cut out of a scene."""
    dv = scene["chosen_on_real_dev"]
    text = (f"Photos that tagd cuts out of a scene with its object mask (no plain backdrop: a floor, a bed, a "
            f"hanger) are a different input from studio shots and Fashion-MNIST images, and the model is wrong "
            f"on them far more often, so they get their own pair, `[review.scene]`: the pair that catches the "
            f"most errors while flagging at most {pct(scene['budget_real_dev'], 0)} of the dev photos that tagd "
            f"converts that way ({scene['scene_photos']} of {scene['dev_photos']}), chosen on those alone with "
            f"their probabilities as `tagd eval --json` reports them. Chosen: `min_confidence` "
            f"{scene['min_confidence']:.2f}, `min_margin` {scene['min_margin']:.2f}; on those dev photos: "
            f"flagged {pct(dv['flagged'])}, errors caught {pct(dv['errors_caught'], 1)}, accuracy on the rest "
            f"{pct(dv['accuracy_unflagged'])}. Studio shots and Fashion-MNIST images keep the rule above.")
    if scene.get("added_after_training"):
        text += (" This rule was added to the trained model afterwards (`python -m fmnist.scenereview`), and only "
                 "the shipped model's `tagd eval` figures below were measured again with it; the other columns "
                 "of that table use one rule for every photo.")
    return [text, ""]


def write_card(m, out_dir):
    d, c, cal, rev, exp, env = m["dense"], m["cnn"], m["calibration"], m["review"], m["export"], m["environment"]
    labels = m["labels"]
    hist = c["history"]
    epoch_s = sorted(h["train_wall_s"] for h in hist)
    probes = list(c["robustness"])
    L = []
    w = L.append
    w("# Model card: fashion-mnist")
    w("")
    w("<!-- written by training/train.py from metrics.json; do not edit by hand -->")
    w("")
    if m.get("smoke_run"):
        w("> **Smoke run** (`--limit`): trained on a subset; these figures say nothing about the model.")
        w("")
    w(f"Tags a product photo, reduced to a 28x28 grayscale image, as one of ten clothing classes. "
      f"Version {m['args']['model_version']}, `model.onnx` ({fmt_int(exp['bytes'])} bytes, "
      f"sha256 `{exp['sha256']}`).")
    w("")
    w("## Headline")
    w("")
    w("| | dense baseline | CNN (ships) |")
    w("|---|---|---|")
    w(f"| test accuracy (10,000 images) | {pct(d['test_acc'])} | **{pct(c['test_acc'])}** |")
    w(f"| parameters | {fmt_int(d['params'])} | {fmt_int(c['params'])} |")
    w(f"| MACs per image | {d['macs'] / 1e6:.2f} M | {c['macs'] / 1e6:.2f} M |")
    w(f"| training wall time | {d['train_wall_s'] / 60:.1f} min | {c['train_wall_s'] / 60:.1f} min |")
    w("")
    w(f"CNN, calibrated: ECE {pct(cal['ece_before']['test'])} before, {pct(cal['ece_after']['test'])} after "
      f"temperature {cal['temperature']:.4f}. ONNX Runtime, one thread: "
      f"{exp['latency'][0]['ms_per_image']:.3f} ms per image at batch 1, "
      f"{exp['latency'][1]['ms_per_image']:.3f} ms per image at batch {exp['latency'][1]['batch']}.")
    w("")
    rp = m.get("real_photos")
    if rp:
        py = rp["python"]
        w(f"The CNN that ships is the first-stage CNN below, fine-tuned on real photos (see \"Real photos\"): "
          f"{pct(py['base']['test_acc'])} on the test set before the fine-tuning, {pct(py['cnn']['test_acc'])} after; "
          f"{pct(py['base']['dev']['accuracy'], 1)} before and {pct(py['cnn']['dev']['accuracy'], 1)} after on the "
          f"held-out real photos.")
        w("")
    w("## Data")
    w("")
    w("Fashion-MNIST (Han Xiao, Kashif Rasul, Roland Vollgraf, arXiv:1708.07747), "
      "MIT licence, Copyright (c) 2017 Zalando SE. 70,000 28x28 grayscale product images: "
      "a bright garment on a black background, ten balanced classes. Read from the four official "
      "gzip IDX files, each checked against its SHA-256:")
    w("")
    for f, sha in m["data"]["files"].items():
        w(f"- `{f}` `{sha}`")
    w("")
    w(f"Split: {fmt_int(m['data']['train'])} training images, {fmt_int(m['data']['val'])} held out of the "
      f"official training set for validation (fixed split seed; used for early stopping, the temperature "
      f"and the review thresholds), and the official {fmt_int(m['data']['test'])} test images, used only for "
      f"the figures in this card.")
    w("")
    w(f"Input contract: `image`, float32 `[N, 1, 28, 28]`, x = (pixel/255 - {m['preprocessing']['mean']:.4f}) / "
      f"{m['preprocessing']['std']:.4f}, garment bright on black. The normalisation is not in the graph. "
      f"Output: `logits`, float32 `[N, 10]`, in this class order: "
      + ", ".join(f"{i} {l}" for i, l in enumerate(labels)) + ".")
    w("")
    w("## Architecture and training")
    w("")
    wd = c["widths"]
    w(f"**CNN** ({fmt_int(c['params'])} parameters, {c['macs'] / 1e6:.1f} M MACs): "
      f"conv3x3({wd[0]}) at 28x28, max-pool; {c['depth']} x conv3x3({wd[1]}) at 14x14, max-pool; "
      f"{c['depth']} x conv3x3({wd[2]}) at 7x7, max-pool to 3x3; dropout, linear({wd[2] * 9} -> 128), ReLU, "
      f"dropout, linear(128 -> 10). Every conv is followed by BatchNorm and ReLU (BN is folded into the conv "
      f"in the ONNX graph).")
    a = m["args"]
    w("")
    w(f"Trained {a['epochs']} epochs, batch {a['batch']}, AdamW (weight decay {a['weight_decay']}), OneCycle "
      f"learning rate peaking at {a['lr']}, cross-entropy with label smoothing {a['label_smoothing']}, "
      f"{'bfloat16 autocast' if c['bf16'] else 'float32'}"
      f"{' and channels-last' if c['channels_last'] else ''}; the exported weights are float32. "
      + (f"The weights evaluated and kept are an exponential moving average of the trained ones (decay "
         f"{a['ema']:g} per step). " if a.get("ema") else "")
      + f"Kept the epoch with the best validation accuracy: epoch {c['best_epoch']} "
      f"({pct(c['best_val_acc'])} on validation)."
      + (" That is the first stage; the fine-tuning on real photos follows (see \"Real photos\")."
         if m.get("real_photos") else ""))
    w("")
    w("Augmentation, on every training batch: for 70% of the images a random affine (shift up to 3 px, "
      "scale 0.75-1.15, rotation up to 8 degrees, horizontal flip half the time); then, each on a share "
      "of the images, intensity times 0.4-1.2 (the background stays black), 3x3 blur or sharpen, and "
      "random erasing of one rectangle. It imitates a photo after cropping, inversion and resizing: "
      "off-centre, smaller or larger than the frame, dimmer, softer."
      + (f" The last {a['ease_epochs']} epochs apply each step to half as many images, so the net settles "
         f"nearer the clean, centred images it is tested on." if a.get("ease_epochs") else ""))
    w("")
    w(f"**Dense baseline** ({fmt_int(d['params'])} parameters): flatten, linear(784 -> 128), ReLU, dropout 0.2, "
      f"linear(128 -> 10); Adam at {a['dense_lr']}, batch {a['dense_batch']}, {a['dense_epochs']} epochs, "
      f"no augmentation; best validation epoch {d['best_epoch']}.")
    w("")
    w(f"Machine: {env['cpu']}, {env['cores']} cores, {env['torch_threads']} PyTorch threads, shared with "
      f"other work, so times vary. Python {env['python']}, torch {env['torch']}, onnx {env['onnx']}, "
      f"onnxruntime {env['onnxruntime']}. CNN epoch (training only): fastest {epoch_s[0]:.0f} s, median "
      f"{epoch_s[len(epoch_s) // 2]:.0f} s, slowest {epoch_s[-1]:.0f} s; CNN training took "
      f"{sum(h['train_wall_s'] for h in hist) / 60:.1f} min of wall time and "
      f"{sum(h['train_cpu_s'] for h in hist) / 60:.1f} min of CPU time (both threads together; on a quiet "
      f"machine CPU time is about twice the wall time). Training, from the data to the last net (both "
      f"models{', the fine-tuning and its control' if m.get('real_photos') else ''}): "
      f"{m['timing']['train_s'] / 60:.1f} min. Whole run, data to card"
      f"{', with tagd measuring every variant on the real photos' if m.get('real_photos') else ''}: "
      f"{m['timing']['total_s'] / 60:.1f} min."
      + (" The steps after training were redone from the run's checkpoint (`--from-checkpoint`); the time "
         "counts the original run up to its checkpoint plus that rerun." if m["timing"].get("from_checkpoint") else ""))
    w("")
    w("## Accuracy per class (test set)")
    w("")
    w("| class | dense | CNN |")
    w("|---|---|---|")
    for l in labels:
        w(f"| {l} | {pct(d['per_class_acc'][l], 1)} | {pct(c['per_class_acc'][l], 1)} |")
    w("")
    w("Confusion matrix of the CNN (rows: true class, columns: predicted): `confusion.png`.")
    w("")
    w("![confusion matrix](confusion.png)")
    w("")
    w("## Robustness probes (test set)")
    w("")
    w("Each probe changes every test image the same way: shifted by 3 px down-right or up-left "
      "(filled with black), mirrored, shrunk to 80% (22x22) and centred, or contrast halved (pixel x 0.5).")
    w("")
    w("| model | " + " | ".join(probes) + " |")
    w("|---|" + "---|" * len(probes))
    for name, r in (("dense", d), ("CNN", c)):
        w(f"| {name} | " + " | ".join(pct(r["robustness"][p]) for p in probes) + " |")
    clean = c["robustness"]["clean"]
    w("| CNN minus clean | " + " | ".join(f"{100 * (c['robustness'][p] - clean):+.2f}" for p in probes) + " |")
    w("")
    w("## Calibration")
    w("")
    joint = "alternatives" in cal
    w((f"Three temperatures are fitted on held-out data (LBFGS on the negative log-likelihood; for a photo "
       f"whose label lists several classes, the likelihood is the probability of the set): on the "
       f"Fashion-MNIST validation split, on the real dev photos, and on both (each split weighing the same). "
       f"The one with the lowest mean calibration error over the two splits ships, the one fitted on "
       f"{cal['fitted_on'].lower().replace('fashion-mnist', 'Fashion-MNIST')}: "
       if joint else "The temperature is fitted on the validation split (LBFGS on the negative log-likelihood): ")
      + f"T = {cal['temperature']:.4f}; the daemon divides the logits by T before the softmax. "
      + (("T < 1 sharpens: label smoothing during training leaves the raw network under-confident."
          if a["label_smoothing"] else "T < 1 sharpens: the raw network is under-confident.")
         if cal["temperature"] < 1 else "T > 1 softens: the raw network is over-confident."))
    w("")
    w("| | ECE, 15 bins (validation) | ECE, 15 bins (test) | NLL (test) |")
    w("|---|---|---|---|")
    w(f"| raw logits | {pct(cal['ece_before']['val'])} | {pct(cal['ece_before']['test'])} | "
      f"{cal['nll_before']['test']:.4f} |")
    w(f"| logits / T | {pct(cal['ece_after']['val'])} | {pct(cal['ece_after']['test'])} | "
      f"{cal['nll_after']['test']:.4f} |")
    w("")
    if joint:
        w("The candidates (ECE on the real dev photos counts a prediction right when it is one of the photo's "
          "acceptable classes; a photo is not a Fashion-MNIST image, so one temperature for both is a "
          "compromise):")
        w("")
        w("| fitted on | T | ECE validation | ECE real dev | ECE test |")
        w("|---|---|---|---|---|")
        for name, r in cal["alternatives"].items():
            mark = " **(ships)**" if r.get("ships") else ""
            w(f"| {name}{mark} | {r['temperature']:.4f} | {pct(r['ece_val'])} | {pct(r['ece_dev'])} | "
              f"{pct(r['ece_test'])} |")
        w("")
    w("![reliability diagram](reliability.png)")
    w("")
    w("## Review thresholds")
    w("")
    ch = rev["chosen_on_val"]
    pcl = rev.get("per_class") or {}
    if "chosen_on_real_dev" in rev:
        dv = rev["chosen_on_real_dev"]
        w(f"An image is flagged for review when its calibrated top-1 probability is below `min_confidence` "
          f"(or its predicted class's own value under `[review.min_confidence_per_class]`) or the gap between "
          f"its top two probabilities is below `min_margin`. The defaults were chosen on held-out data only: "
          f"the Fashion-MNIST validation split and the real dev photos. First the global pair, then per-class "
          f"values one class at a time; each candidate must flag at most {pct(rev['budget_val'], 1)} of the "
          f"validation images"
          + (f" and catch at least {pct(rev['fmnist_floor'], 1)} of their errors (3 points below the best pair "
             f"for Fashion-MNIST alone, so the photos cannot undo the benchmark's review)"
             if rev.get("fmnist_floor") is not None else "")
          + f", and at most {pct(rev['budget_real_dev'], 0)} of the dev photos"
          + ("" if rev.get("real_budget_met", True) else
             " (no candidate kept that budget as well, so the one flagging the fewest dev photos was taken)")
          + "; the one catching the largest share of errors, averaged over the two splits, wins. Chosen: "
          f"`min_confidence` {ch['min_confidence']:.2f}, `min_margin` {ch['min_margin']:.2f}"
          + (", per class " + ", ".join(f"{k} {v:.2f}" for k, v in pcl.items()) if pcl else "")
          + f". On validation: flagged {pct(ch['flagged'])}, errors caught {pct(ch['errors_caught'], 1)}; on the "
          f"dev photos: flagged {pct(dv['flagged'])}, errors caught {pct(dv['errors_caught'], 1)}, accuracy on "
          f"the rest {pct(dv['accuracy_unflagged'])} (all of them: {pct(dv['accuracy'])}). On the test set "
          f"(the default row includes the per-class values, the others do not):")
    else:
        w(f"An image is flagged for review when its calibrated top-1 probability is below `min_confidence` or "
          f"the gap between its top two probabilities is below `min_margin`. The defaults were chosen on the "
          f"validation split as the pair that catches the most errors while flagging at most "
          f"{pct(rev['budget_val'], 1)} of the images there (flagged {pct(ch['flagged'])}, errors caught "
          f"{pct(ch['errors_caught'], 1)}). On the test set:")
    w("")
    w("| min_confidence | min_margin | test images flagged | accuracy on the rest | errors caught |")
    w("|---|---|---|---|---|")
    for r in rev["table_test"]:
        mark = " **(default)**" if r["default"] else ""
        w(f"| {r['min_confidence']:.2f}{mark} | {r['min_margin']:.2f} | {pct(r['flagged'], 1)} | "
          f"{pct(r['accuracy_unflagged'])} | {pct(r['errors_caught'], 1)} |")
    w("")
    if "fmnist_only_rule" in rev:
        fo, jr = rev["fmnist_only_rule"], rev["joint_rule"]
        w("One rule for two kinds of input is a compromise. Against the rule a Fashion-MNIST-only model would "
          "use (the best pair on the validation split alone, same budget):")
        w("")
        w("| rule | test flagged | test errors caught | dev photos flagged | dev accuracy on the rest |")
        w("|---|---|---|---|---|")
        for name, r in ((f"Fashion-MNIST alone: {fo['min_confidence']:.2f} / {fo['min_margin']:.2f}", fo),
                        ("both splits **(default)**", jr)):
            w(f"| {name} | {pct(r['on_test']['flagged'], 1)} | {pct(r['on_test']['errors_caught'], 1)} | "
              f"{pct(r['on_real_dev']['flagged'], 1)} | {pct(r['on_real_dev']['accuracy_unflagged'])} |")
        w("")
    if "scene" in rev:
        L.extend(scene_rule(rev["scene"]))
    if ch["min_margin"] <= 2 * ch["min_confidence"] - 1 and not pcl:
        w(f"At this operating point the margin rule adds nothing: a top-1 probability of at least "
          f"{ch['min_confidence']:.2f} leaves at most {1 - ch['min_confidence']:.2f} for the runner-up, so the "
          f"margin is at least {2 * ch['min_confidence'] - 1:.2f} whenever the confidence rule does not fire. "
          f"Raising `min_margin` above that flags more images.")
        w("")
    L.extend(report_real.section(m))
    w("## ONNX file")
    w("")
    ck = exp["check"]
    w(f"Opset {exp['opset']}, one file with the weights inside, {fmt_int(exp['bytes'])} bytes "
      f"({exp['bytes'] / 2 ** 20:.2f} MiB), sha256 `{exp['sha256']}`. The dynamic batch dimension is `N`. "
      f"Passes `onnx.checker` with `full_check`. On all {fmt_int(ck['n_images'])} test images ONNX Runtime and "
      f"PyTorch agree: largest logit difference {ck['max_abs_logit_diff']:.2g}, accuracy "
      f"{pct(ck['accuracy_onnx'])} in both.")
    w("")
    w("Latency in ONNX Runtime (CPU provider, 1 intra-op thread, median of a run of calls, best of "
      f"{exp['latency'][0]['runs']} runs):")
    w("")
    w("| batch | ms per call | ms per image |")
    w("|---|---|---|")
    for lt in exp["latency"]:
        w(f"| {lt['batch']} | {lt['ms_per_call']:.3f} | {lt['ms_per_image']:.4f} |")
    w("")
    w("## Fixtures")
    w("")
    w("The first 12 test images are in `tests/fixtures/fmnist/` as 8-bit grayscale PNG, with the "
      "predictions of this `model.onnx` (preprocessing and temperature from `model.toml`) in "
      "`expected.json`:")
    w("")
    w("| file | true | predicted | probability |")
    w("|---|---|---|---|")
    for f in m["fixtures"]:
        ok = "" if f["true_label"] == f["predicted"] else " (wrong)"
        w(f"| {f['file']} | {labels[f['true_label']]} | {f['predicted_name']}{ok} | "
          f"{max(f['probabilities']):.5f} |")
    w("")
    w("## Reproducing")
    w("")
    w("```")
    w(m["command"])
    w("```")
    w("")
    w(f"which runs `{m['python_command']}` in `training/` (DIR is the folder with the four .gz files; "
      f"without it the files are taken from the Debian package `dataset-fashion-mnist` or downloaded"
      + ("; REAL is the folder of clothing-train photos with its labels.csv, converted by `tagd convert` into "
         "PNGS; EVAL the folder holding `product/` and `wild/`, read only for the figures on real photos"
         if m.get("real_photos") else "")
      + "). Seeds are fixed; results repeat up to the order of floating-point sums across thread counts.")
    if not m.get("real_photos"):
        w("")
        w("This run had no real photos (`REAL=DIR` not given): the model is trained on Fashion-MNIST alone, "
          "without the fine-tuning on real photos.")
    w("")
    w("## Known limits")
    w("")
    w("- Fashion-MNIST is catalogue imagery: one item, flat, centred, front view, on a plain background. "
      "Real photos differ: worn garments, people, side and three-quarter views, folds, clutter. "
      "The daemon's preprocessing (grayscale, invert, crop, resize) narrows the gap but does not close it.")
    w("- White and very light items turn dark after inversion and look like little the network has seen; "
      "expect them to be tagged less reliably. The contrast probe covers dim garments, not inverted ones.")
    worst = sorted(labels, key=lambda l: c["per_class_acc"][l])[:3]
    weakest = ", ".join(f"{l} ({pct(c['per_class_acc'][l], 1)})" for l in worst)
    w(f"- Upper-body garments are confused with one another: Shirt, T-shirt/top, Pullover and Coat. "
      f"The weakest classes here are {weakest}. "
      f"The review thresholds exist mostly for these.")
    w("- Ten classes only; anything else (shoes that are not sneakers, sandals or boots, accessories other "
      "than bags) is forced into one of them, usually with a low confidence.")
    if m.get("real_photos"):
        w("- The real photos for fine-tuning are phone photos of clothes laid flat or hung up, with no bags and "
          "no single-class footwear, and none of a garment worn by a model. The conversion cuts a worn garment "
          "out of the person by its colour (`fmnist-v3`) and keeps it to the rows between the shoulders and the "
          "hem (`fmnist-v4`); a top over trousers of nearly its colour, an open jacket, or a shop photo whose "
          "figure touches three sides of the frame still keeps most of the person and is often wrong. Leather shoes "
          "(a shop's formal shoes, labelled Sneaker) look to the network like ankle boots. The temperature and "
          "thresholds are fitted on the dev split and on Fashion-MNIST; re-check them on labelled photos from "
          "the daemon's own inbox before trusting them.")
    else:
        w("- The temperature and thresholds are fitted on Fashion-MNIST; on real photos confidences are likely "
          "too high. Re-check them on labelled photos from the daemon's own inbox before trusting them.")
    w("")
    with open(os.path.join(out_dir, "MODEL_CARD.md"), "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join("..", "models", "fashion-mnist", "metrics.json")
    with open(path) as f:
        metrics = json.load(f)
    out = os.path.dirname(os.path.abspath(path))
    plots(metrics, out)
    write_card(metrics, out)
