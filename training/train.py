"""Train, calibrate, export and document the Fashion-MNIST tagger.

One run does everything, top to bottom:
  data -> dense baseline -> CNN -> [fine-tuning on real photos] ->
  evaluation and robustness probes -> temperature -> review thresholds ->
  ONNX export and checks -> fixtures -> model.toml, metrics.json,
  MODEL_CARD.md -> [figures on labelled real photos, measured by tagd]

    python train.py --data DIR                 # the full, reproducible run
    python train.py --data DIR --real PNGS     # ... then fine-tuned on real photos
    python train.py --epochs 1 --limit 2000    # a smoke run, a minute or two

PNGS is a folder of real photos already converted by `tagd convert` (one
28x28 PNG per photo, plus labels.csv); `make -C training train REAL=DIR`
makes it. Without --real the model is trained on Fashion-MNIST alone.

Per-epoch logs go to runs/<time>/log.jsonl; a checkpoint of both nets goes
next to it, and `--from-checkpoint` redoes everything after training.
"""

import argparse
import copy
import json
import os
import platform
import shlex
import time

import numpy as np
import torch
import torch.nn.functional as F

from fmnist import calibrate, data, export, finetune, real, realcal, realeval, report, scenereview
from fmnist.augment import PROBES, augment
from fmnist.model import CNN, MEAN, STD, DenseNet, count_macs, count_params, normalise

HERE = os.path.dirname(os.path.abspath(__file__))

# -----------------------------------------------------------------------------
# defaults; every one can be overridden on the command line
seed = 0
threads = 2              # the machine has two cores; more threads only thrash
val_size = 5000          # held out of the 60k training images, for early stopping and calibration
# dense baseline: the Keras tutorial recipe
dense_epochs = 10
dense_batch = 64          # 32 in the tutorial; 64 halves the step count on two shared cores
dense_lr = 1e-3
# CNN
epochs = 40
ease_epochs = 6          # the last epochs augment at half strength (see augment.augment)
ema = 0.999              # weights kept: an exponential moving average, updated every step (0: off)
batch = 128
lr = 3e-3                # OneCycle peak
weight_decay = 0.05      # AdamW, decoupled
label_smoothing = 0.0    # smoothing blurs the confidence ranking the review flag relies on
widths = "32,64,192"     # channels at 28x28, 14x14 and 7x7
depth = 2                # convs at 14x14 and at 7x7
bf16 = None              # CPU autocast; None: on where the CPU has bf16 instructions (weights stay fp32)
channels_last = True
# review: images flagged on the validation split, at most (the target on test is 10%)
review_budget = 0.095
model_version = "3"      # 2: fine-tuned on real photos, fmnist-v2; 3: fmnist-v3, no label smoothing, EMA
fixtures_n = 12
# The daemon's conversion the model is trained for and ships with.
preprocessing = "fmnist-v4"
# Stage 2, only with --real: fine-tuning on real photos (see fmnist/finetune.py)
real_dev_frac = 0.15     # of each label cell, held out: early stopping, temperature, thresholds
real_split_seed = 2024   # fixed on its own, like the Fashion-MNIST split
ft_steps = 2500
ft_fmnist = 80           # Fashion-MNIST images per batch
ft_real = 48             # real photos per batch
ft_lr = 1e-3             # OneCycle peak
ft_bag_boost = 2.0       # Bag drawn this many times as often as another Fashion-MNIST class
ft_real_weight = 1.0     # loss = Fashion-MNIST mean + this * real-photo mean
ft_photo_p = 0.25        # share of Fashion-MNIST images given photo-like defects (protects Bag)
ft_fmnist_strength = 0.5  # their first-stage augmentation, at the strength of its last epochs
ft_distill = 3.0         # weight of KL(first-stage net || net) on the Fashion-MNIST images
ft_ema = 0.998           # keep an exponential moving average of the weights (0: off)
ft_eval_every = 250
ft_bag_guard = 0.03      # keep no step whose Bag recall on photo-like validation bags fell more than this
ft_fmnist_guard = 0.004  # keep no step whose Fashion-MNIST validation accuracy fell more than this
ft_control = True        # also run the same fine-tuning without real photos, for the card
review_budget_real = 0.35  # real dev photos flagged, at most (the target on real photos is 40%)
# -----------------------------------------------------------------------------


def native_bf16():
    """Whether the CPU computes bfloat16 itself (AVX512-BF16 or AMX). There
    bf16 convs ran 1.5-2x faster than float32; on a CPU with only AVX2 they
    are emulated, and a training step took 3.3 s instead of 0.22 s."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set(cpuinfo.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="folder with the four .gz files (else Debian's, else download)")
    p.add_argument("--out", default=os.path.join(HERE, "..", "models", "fashion-mnist"))
    p.add_argument("--fixtures", default=os.path.join(HERE, "..", "tests", "fixtures", "fmnist"))
    p.add_argument("--runs", default=os.path.join(HERE, "runs"))
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--val-size", type=int, default=val_size)
    p.add_argument("--dense-epochs", type=int, default=dense_epochs)
    p.add_argument("--dense-batch", type=int, default=dense_batch)
    p.add_argument("--dense-lr", type=float, default=dense_lr)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--ease-epochs", type=int, default=ease_epochs)
    p.add_argument("--ema", type=float, default=ema)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--weight-decay", type=float, default=weight_decay)
    p.add_argument("--label-smoothing", type=float, default=label_smoothing)
    p.add_argument("--widths", default=widths)
    p.add_argument("--depth", type=int, default=depth)
    p.add_argument("--bf16", type=int, default=int(native_bf16() if bf16 is None else bf16), choices=[0, 1],
                   help="bfloat16 autocast (default: only where the CPU computes bf16 natively)")
    p.add_argument("--channels-last", type=int, default=int(channels_last), choices=[0, 1])
    p.add_argument("--review-budget", type=float, default=review_budget)
    p.add_argument("--review-budget-real", type=float, default=review_budget_real)
    p.add_argument("--preprocessing", default=preprocessing, choices=list(realeval.ABLATION),
                   help="the daemon's conversion named in model.toml")
    p.add_argument("--real", default=None,
                   help="folder of real photos converted by `tagd convert` (PNGs + labels.csv): fine-tune on them")
    p.add_argument("--real-dev-frac", type=float, default=real_dev_frac)
    p.add_argument("--real-split-seed", type=int, default=real_split_seed)
    p.add_argument("--ft-steps", type=int, default=ft_steps)
    p.add_argument("--ft-fmnist", type=int, default=ft_fmnist)
    p.add_argument("--ft-real", type=int, default=ft_real)
    p.add_argument("--ft-lr", type=float, default=ft_lr)
    p.add_argument("--ft-bag-boost", type=float, default=ft_bag_boost)
    p.add_argument("--ft-real-weight", type=float, default=ft_real_weight)
    p.add_argument("--ft-photo-p", type=float, default=ft_photo_p)
    p.add_argument("--ft-fmnist-strength", type=float, default=ft_fmnist_strength)
    p.add_argument("--ft-distill", type=float, default=ft_distill)
    p.add_argument("--ft-ema", type=float, default=ft_ema)
    p.add_argument("--ft-eval-every", type=int, default=ft_eval_every)
    p.add_argument("--ft-bag-guard", type=float, default=ft_bag_guard)
    p.add_argument("--ft-fmnist-guard", type=float, default=ft_fmnist_guard)
    p.add_argument("--ft-control", type=int, default=int(ft_control), choices=[0, 1])
    p.add_argument("--real-photos", default=None,
                   help="the original photos of --real (for tagd's own figures on the dev split)")
    p.add_argument("--eval-photos", default=None,
                   help="folder with product/ and wild/ labelled photos: figures for the card only, never training")
    p.add_argument("--tagd", default=None, help="tagd binary, for the figures on real photos")
    p.add_argument("--onnxruntime", default=None, help="libonnxruntime.so.1.31.1, for tagd")
    p.add_argument("--model-version", default=model_version)
    p.add_argument("--limit", type=int, default=0,
                   help="use only this many training images (smoke runs; the figures mean nothing)")
    p.add_argument("--from-checkpoint", default=None,
                   help="skip training, load both nets from this checkpoint, redo everything after")
    return p.parse_args(argv)


def log_line(fh, **rec):
    print(json.dumps(rec), flush=True)
    if fh:
        fh.write(json.dumps(rec) + "\n")
        fh.flush()


@torch.no_grad()
def predict(model, x, bs=1000):
    """Logits in fp32, eval mode: exactly what the exported graph computes."""
    model.eval()
    return torch.cat([model(x[i:i + bs]) for i in range(0, len(x), bs)])


def accuracy(logits, y):
    return float((logits.argmax(1) == y).float().mean())


def train_model(model, name, x_tr, y_tr, x_val, y_val, *, epochs, batch, opt, sched, use_aug,
                smoothing, use_bf16, use_cl, gen, log, ease_epochs=0, ema_decay=0.0):
    """Minibatch training on in-memory tensors (pixels in [0, 1]); keeps the
    weights of the epoch with the best validation accuracy. With `ema_decay`
    the weights evaluated and kept are an exponential moving average of the
    trained ones (BatchNorm statistics included), updated every step."""
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay),
        use_buffers=True) if ema_decay else None
    kept = ema.module if ema is not None else model
    n = len(x_tr)
    best = {"val_acc": -1.0}
    history = []
    t_start = time.time()
    for epoch in range(1, epochs + 1):
        model.train()
        t0, c0 = time.time(), time.process_time()
        perm = torch.randperm(n, generator=gen)
        tot_loss, tot_correct, seen = 0.0, 0, 0
        strength = 0.5 if epoch > epochs - ease_epochs else 1.0
        for i in range(0, n - batch + 1, batch):   # drop the ragged last batch: BN dislikes tiny ones
            idx = perm[i:i + batch]
            xb, yb = x_tr[idx], y_tr[idx]
            if use_aug:
                xb = augment(xb, gen, strength)
            xb = normalise(xb)
            if use_cl:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                out = model(xb)
                loss = F.cross_entropy(out.float(), yb, label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched:
                sched.step()
            if ema is not None:
                ema.update_parameters(model)
            tot_loss += float(loss.detach()) * len(yb)
            tot_correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
        train_wall, train_cpu = time.time() - t0, time.process_time() - c0
        val_logits = predict(kept, normalise(x_val))
        rec = {
            "model": name, "epoch": epoch,
            "train_loss": round(tot_loss / seen, 5), "train_acc": round(tot_correct / seen, 5),
            "val_loss": round(float(F.cross_entropy(val_logits, y_val)), 5),
            "val_acc": round(accuracy(val_logits, y_val), 5),
            "lr": opt.param_groups[0]["lr"], "aug_strength": strength if use_aug else 0.0,
            "train_wall_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1),
            "epoch_wall_s": round(time.time() - t0, 1),
        }
        history.append(rec)
        log_line(log, **rec)
        if rec["val_acc"] > best["val_acc"]:
            best = {"val_acc": rec["val_acc"], "epoch": epoch,
                    "state": copy.deepcopy(kept.state_dict())}
    model.load_state_dict(best["state"])
    model = model.to(memory_format=torch.contiguous_format).eval()
    return model, {"history": history, "best_epoch": best["epoch"], "best_val_acc": best["val_acc"],
                   "train_wall_s": round(time.time() - t_start, 1)}


def confusion(pred, y, k=10):
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def write_png_gray(path, img_u8):
    from PIL import Image
    Image.fromarray(np.asarray(img_u8, dtype=np.uint8), mode="L").save(path, optimize=True)


def read_png_gray(path):
    from PIL import Image
    with Image.open(path) as im:
        if im.mode != "L" or im.size != (28, 28):
            raise ValueError(f"{path}: expected 28x28 8-bit grayscale, got {im.mode} {im.size}")
        return np.asarray(im, dtype=np.uint8)


# Options that name folders or programs of the machine that ran, not how
# the nets were made.
LOCAL_PATHS = ("data", "out", "fixtures", "runs", "from_checkpoint", "real", "real_photos", "eval_photos", "tagd",
               "onnxruntime")
# Options that only change what happens after training; --from-checkpoint
# takes them from its command line, everything else from the checkpoint.
AFTER_TRAINING = LOCAL_PATHS + ("review_budget", "review_budget_real", "model_version", "preprocessing")


def write_model_toml(path, sha, temperature, min_conf, min_margin, version, preprocessing=preprocessing,
                     per_class=None):
    """The manifest; `per_class` maps class indices to their own min_confidence."""
    labels = ", ".join(json.dumps(l) for l in data.LABELS)
    overrides = "".join(f"{json.dumps(data.LABELS[int(k)])} = {v:.2f}\n" for k, v in sorted((per_class or {}).items()))
    text = f"""# written by training/train.py; do not edit by hand
name = "fashion-mnist"
version = "{version}"                        # bump per release
onnx_file = "model.onnx"
sha256 = "{sha}"
preprocessing = "{preprocessing}"
labels = [{labels}]

[input]
name = "image"
shape = [1, 28, 28]                  # per image; the batch dimension is dynamic
mean = {MEAN:.4f}
std = {STD:.4f}

[output]
name = "logits"

[calibration]
temperature = {temperature:.4f}                  # divide logits by this before softmax

[review]
min_confidence = {min_conf:.2f}                # calibrated top-1 probability below this -> flag "low_confidence"
min_margin = {min_margin:.2f}                    # top-1 minus top-2 probability below this -> flag "small_margin"

[review.min_confidence_per_class]    # optional per-class overrides, by label name; may be empty
{overrides}"""
    with open(path, "w") as f:
        f.write(text)


def reproduce_command(args):
    """The train.py command line that gives these nets: every option that is
    not at its default, with the data folder (a local path) left as DIR."""
    defaults = vars(parse_args([]))
    parts = ["python train.py"] + (["--data DIR"] if args.data else []) + (["--real PNGS"] if args.real else [])
    for k, v in vars(args).items():
        if k in LOCAL_PATHS or v == defaults[k]:
            continue
        parts.append(f"--{k.replace('_', '-')} {shlex.quote(str(v))}")
    return " ".join(parts)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_real(args, to_x):
    """The converted real photos, split into training and dev photos by label cell."""
    r = real.load_converted(args.real)
    tr, dev = real.stratified_split(r["cells"], args.real_dev_frac, args.real_split_seed)

    def pack(idx):
        return {"x": to_x(r["images"][idx]), "accept": torch.from_numpy(r["accept"][idx]),
                "cells": [r["cells"][i] for i in idx], "files": [r["files"][i] for i in idx]}
    return {"train": pack(tr), "dev": pack(dev)}


def real_figures(model, dev):
    """On the real dev photos: accuracy by the set rule, per first-listed
    class and per label cell, and footwear called Bag."""
    pred = predict(model, normalise(dev["x"])).argmax(1)
    ok = real.set_correct(pred, dev["accept"]).numpy()
    pred, acc = pred.numpy(), dev["accept"].numpy()
    cells = np.array(dev["cells"])
    first = np.array([int(c.split("|")[0]) for c in dev["cells"]])
    foot = acc[:, list(finetune.FOOTWEAR)].any(1) & ~acc[:, finetune.BAG]
    return {
        "photos": len(ok), "accuracy": float(ok.mean()),
        "per_class": {data.LABELS[c]: {"photos": int((first == c).sum()), "accuracy": float(ok[first == c].mean())}
                      for c in sorted(set(first.tolist()))},
        "per_cell": {c: {"photos": int((cells == c).sum()), "accuracy": float(ok[cells == c].mean())}
                     for c in sorted(set(cells.tolist()))},
        "footwear_photos": int(foot.sum()), "footwear_called_bag": int((pred[foot] == finetune.BAG).sum()),
        "predicted_counts": np.bincount(pred, minlength=10).tolist(),
    }


def temperature_candidates(val_logits, y_val, dev_logits, dev_accept):
    """Each candidate temperature with its calibration error on both held-out splits."""
    fits = {"Fashion-MNIST validation": calibrate.fit_temperature(val_logits, y_val),
            "real dev photos": realcal.fit_temperature_sets([(dev_logits, dev_accept)]),
            "both, equal weight": realcal.fit_temperature_sets([(val_logits, y_val), (dev_logits, dev_accept)])}
    out = {}
    for name, t in fits.items():
        t = round(t, 4)
        out[name] = {"temperature": t, "ece_val": calibrate.ece(calibrate.softmax(val_logits, t), y_val),
                     "ece_dev": realcal.ece_sets(calibrate.softmax(dev_logits, t), dev_accept)}
    return out


def fit_review(val_logits, y_val, dev_logits, dev_accept, args):
    """Temperature and review thresholds, from held-out data only: the
    Fashion-MNIST validation split and, with real photos, their dev split.

    With real photos there are three candidate temperatures: fitted on the
    validation split, on the dev photos (set-valued NLL), and on both (each
    split weighing the same). The one with the lowest mean of the two
    splits' calibration errors is kept. The thresholds must then keep both
    flagged shares within budget; see realcal.choose_thresholds_joint.
    """
    if dev_logits is None:
        t = round(calibrate.fit_temperature(val_logits, y_val), 4)
        ch = calibrate.choose_thresholds(calibrate.softmax(val_logits, t), y_val, args.review_budget)
        return t, {"min_confidence": ch["min_confidence"], "min_margin": ch["min_margin"], "per_class": {},
                   "fmnist_val": ch}
    t = min(temperature_candidates(val_logits, y_val, dev_logits, dev_accept).values(),
            key=lambda c: (c["ece_val"] + c["ece_dev"]) / 2)["temperature"]
    ch = realcal.choose_thresholds_joint(calibrate.softmax(val_logits, t), y_val, calibrate.softmax(dev_logits, t),
                                         dev_accept, args.review_budget, args.review_budget_real)
    return t, ch


def write_variant(folder, model, temperature, ch, preproc, version, x_check, y_check):
    """A model folder for tagd (ONNX file, checked, and its manifest): the
    nets compared with the one that ships, on real photos."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.onnx")
    export.export_onnx(model, path)
    export.check_against_torch(path, model, x_check, y_check)
    write_model_toml(os.path.join(folder, "model.toml"), export.file_sha256(path), temperature,
                     ch["min_confidence"], ch["min_margin"], version, preproc, ch.get("per_class"))
    return folder


def real_photo_figures(args, rp, ft, models, results, val_logits, y_val_np, x_val, y_val, run_dir, out_dir,
                       x_check, y_check, log):
    """Everything the card says about real photos: the split, the
    fine-tuning, each net on the dev photos (its inputs as the daemon makes
    them), and, when tagd and labelled photos are given, tagd's own figures
    for the net that ships, the net before fine-tuning and the control."""
    split = {"train": len(rp["train"]["x"]), "dev": len(rp["dev"]["x"]), "dev_frac": args.real_dev_frac,
             "seed": args.real_split_seed,
             "cells": {c: [rp["train"]["cells"].count(c), rp["dev"]["cells"].count(c)]
                       for c in sorted(set(rp["train"]["cells"]))}}
    names = {"base": "before fine-tuning", "control": "Fashion-MNIST-only fine-tuning", "cnn": "ships"}
    nets = {k: models[k] for k in ("base", "control", "cnn") if k in models}
    python = {}
    for k, m in nets.items():
        python[k] = {"test_acc": results[k]["test_acc"], "test_bag_recall": results[k]["per_class_acc"]["Bag"],
                     "robustness": results[k]["robustness"], "dev": real_figures(m, rp["dev"])}
        log_line(log, event="real dev", model=k, accuracy=python[k]["dev"]["accuracy"],
                 footwear_called_bag=python[k]["dev"]["footwear_called_bag"], test_acc=python[k]["test_acc"])
    out = {"split": split, "names": names, "python": python, "dev_files": rp["dev"]["files"],
           "finetune": {k: v for k, v in ft.items()}, "tagd": None}
    if not (args.tagd and args.onnxruntime and (args.eval_photos or args.real_photos)):
        return out

    # Model folders for tagd: the first-stage net as it shipped before (its
    # temperature and thresholds from Fashion-MNIST alone, with either
    # conversion) and the control (temperature and thresholds chosen as for
    # the net that ships).
    vdir = os.path.join(run_dir, "variants")
    base_val = predict(models["base"], normalise(x_val)).numpy().astype(np.float64)
    t_b, ch_b = fit_review(base_val, y_val_np, None, None, args)
    folders = {f"before-{v}": write_variant(os.path.join(vdir, f"before-{v}"), models["base"], t_b, ch_b,
                                            f"fmnist-{v}", "before", x_check, y_check)
               for v in ("v1", "v2", "v3")}
    if "control" in models:
        cv = predict(models["control"], normalise(x_val)).numpy().astype(np.float64)
        cd = predict(models["control"], normalise(rp["dev"]["x"])).numpy().astype(np.float64)
        t_c, ch_c = fit_review(cv, y_val_np, cd, rp["dev"]["accept"].numpy(), args)
        folders["control"] = write_variant(os.path.join(vdir, "control"), models["control"], t_c, ch_c,
                                           args.preprocessing, "control", x_check, y_check)
    folders["ships"] = out_dir
    sets = {}
    tmp = None
    if args.eval_photos:
        for s in ("product", "wild"):
            if os.path.isdir(os.path.join(args.eval_photos, s)):
                sets[s] = os.path.join(args.eval_photos, s)
    if args.real_photos:
        tmp = os.path.join(run_dir, "dev-photos")
        dev_files = set(rp["dev"]["files"])
        realeval.subset_folder(args.real_photos, os.path.join(args.real_photos, "labels.csv"),
                               lambda r: r["file"] in dev_files, tmp)
        sets["dev"] = tmp
        # Photos cut out of a scene get their own review rule, chosen on the
        # dev photos as tagd sees them, before anything is measured.
        for name in ("control", "ships"):
            if name in folders:
                scene = scenereview.fit(folders[name], tmp, args.tagd, args.onnxruntime, args.review_budget_real)
                log_line(log, event="scene review", model=name, min_confidence=scene["min_confidence"],
                         min_margin=scene["min_margin"], chosen_on_real_dev=scene["chosen_on_real_dev"])
                if name == "ships":
                    out["scene_review"] = scene
    sheet = None
    if "wild" in sets:
        # Only the CC0 photos (source_label `label=...`) may be drawn into a committed file.
        sheet = (sets["wild"], lambda r: r["source"].startswith("label="), os.path.join(out_dir, "real-mistakes.png"),
                 "wild-cc0")
    out["tagd"] = realeval.measure(args.tagd, args.onnxruntime, folders, sets, data.LABELS, "ships",
                                   preprocessing=args.preprocessing,
                                   sheet=sheet, log=lambda msg: log_line(log, event=msg))
    out["tagd"]["variants"] = {"before": {"temperature": t_b, **{k: ch_b[k] for k in ("min_confidence", "min_margin")}}}
    return out


def main(argv=None):
    args = parse_args(argv)
    t_run = time.time()
    ck = None
    if args.from_checkpoint:
        ck = torch.load(args.from_checkpoint, map_location="cpu", weights_only=False)
        # The nets and the card must describe how they were trained, not this
        # command line; only what comes after training may be changed.
        # A first-stage checkpoint leaves the fine-tuning options to this
        # command line; a fine-tuned one fixes them too.
        finetuned = "finetune" in ck
        for k, v in ck["args"].items():
            if k in AFTER_TRAINING or (not finetuned and (k.startswith("ft_") or k.startswith("real_"))):
                continue
            setattr(args, k, v)
        if finetuned and not args.real:
            raise SystemExit(f"{args.from_checkpoint} was fine-tuned on real photos: pass --real with the "
                             f"same converted photos (the temperature and thresholds need their dev split)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    out_dir, fix_dir = os.path.abspath(args.out), os.path.abspath(args.fixtures)
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(fix_dir, exist_ok=True)
    run_dir = os.path.join(args.runs, time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(run_dir, exist_ok=True)
    log = open(os.path.join(run_dir, "log.jsonl"), "w")
    log_line(log, event="start", args={k: v for k, v in vars(args).items()
                                        if k not in ("data", "out", "fixtures", "runs")})

    # ---- data ---------------------------------------------------------------
    d = data.load(data.find_data_dir(args.data))
    tr_idx, val_idx = data.split_train_val(len(d["train_labels"]), args.val_size)
    if args.limit:
        tr_idx = tr_idx[:args.limit]
    to_x = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)
    x_tr, y_tr = to_x(d["train_images"][tr_idx]), torch.from_numpy(d["train_labels"][tr_idx].astype(np.int64))
    x_val, y_val = to_x(d["train_images"][val_idx]), torch.from_numpy(d["train_labels"][val_idx].astype(np.int64))
    x_te, y_te = to_x(d["test_images"]), torch.from_numpy(d["test_labels"].astype(np.int64))
    log_line(log, event="data", train=len(x_tr), val=len(x_val), test=len(x_te))
    rp = load_real(args, to_x) if args.real else None
    if rp:
        log_line(log, event="real photos", train=len(rp["train"]["x"]), dev=len(rp["dev"]["x"]))

    widths_t = tuple(int(w) for w in args.widths.split(","))
    torch.manual_seed(args.seed)
    dense = DenseNet()
    torch.manual_seed(args.seed)
    cnn = CNN(widths=widths_t, depth=args.depth)

    # ---- training -----------------------------------------------------------
    if args.from_checkpoint:
        dense.load_state_dict(ck["dense"])
        cnn.load_state_dict(ck["finetune"]["base_cnn"] if "finetune" in ck else ck["cnn"])
        dense_info, cnn_info = ck["dense_info"], ck["cnn_info"]
        dense.eval(), cnn.eval()
        log_line(log, event="loaded", checkpoint=os.path.basename(args.from_checkpoint))
    else:
        gen = torch.Generator().manual_seed(args.seed)
        opt = torch.optim.Adam(dense.parameters(), lr=args.dense_lr)
        dense, dense_info = train_model(
            dense, "dense", x_tr, y_tr, x_val, y_val, epochs=args.dense_epochs, batch=args.dense_batch,
            opt=opt, sched=None, use_aug=False, smoothing=0.0, use_bf16=False, use_cl=False, gen=gen, log=log)

        gen = torch.Generator().manual_seed(args.seed + 1)
        opt = torch.optim.AdamW(cnn.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        steps = args.epochs * (len(x_tr) // args.batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.2)
        cnn, cnn_info = train_model(
            cnn, "cnn", x_tr, y_tr, x_val, y_val, epochs=args.epochs, batch=args.batch, opt=opt,
            sched=sched, use_aug=True, smoothing=args.label_smoothing, use_bf16=bool(args.bf16),
            use_cl=bool(args.channels_last), gen=gen, log=log, ease_epochs=args.ease_epochs,
            ema_decay=args.ema)
        torch.save({"dense": dense.state_dict(), "cnn": cnn.state_dict(), "dense_info": dense_info,
                    "cnn_info": cnn_info, "args": vars(args), "train_s": time.time() - t_run},
                   os.path.join(run_dir, "checkpoint.pt"))
    first_stage_s = time.time() - t_run
    if args.from_checkpoint:
        first_stage_s = ck.get("train_s", dense_info["train_wall_s"] + cnn_info["train_wall_s"])

    # ---- stage 2: fine-tuning on real photos -----------------------------------
    base_cnn, control, ft = cnn, None, None
    if rp and ck is not None and "finetune" in ck:
        ft = ck["finetune"]
        cnn = CNN(widths=widths_t, depth=args.depth)
        cnn.load_state_dict(ft["cnn"])
        cnn.eval()
        if ft.get("control"):
            control = CNN(widths=widths_t, depth=args.depth)
            control.load_state_dict(ft["control"])
            control.eval()
        ft = {k: v for k, v in ft.items() if k not in ("cnn", "base_cnn", "control")}
    elif rp:
        ft_kw = dict(steps=args.ft_steps, n_fmnist=args.ft_fmnist, n_real=args.ft_real, lr=args.ft_lr,
                     weight_decay=args.weight_decay, smoothing=args.label_smoothing, bag_boost=args.ft_bag_boost,
                     real_weight=args.ft_real_weight, photo_p=args.ft_photo_p, eval_every=args.ft_eval_every,
                     use_bf16=bool(args.bf16), use_cl=bool(args.channels_last), distill=args.ft_distill,
                     ema_decay=args.ft_ema, bag_guard=args.ft_bag_guard,
                     fmnist_guard=args.ft_fmnist_guard, fmnist_strength=args.ft_fmnist_strength,
                     log=log, log_line=log_line)
        t_ft = time.time()
        cnn, info = finetune.finetune(base_cnn, x_tr, y_tr, x_val, y_val, rp["train"], rp["dev"],
                                      gen=torch.Generator().manual_seed(args.seed + 2), name="finetune", **ft_kw)
        ft = {"info": info, "wall_s": round(time.time() - t_ft, 1)}
        if args.ft_control:
            # The same steps and Fashion-MNIST batches without the real photos,
            # its weights chosen on Fashion-MNIST validation alone.
            control, cinfo = finetune.finetune(base_cnn, x_tr, y_tr, x_val, y_val, None, None,
                                               gen=torch.Generator().manual_seed(args.seed + 2), name="control",
                                               **ft_kw)
            ft["control_info"] = cinfo
        torch.save({"dense": dense.state_dict(), "cnn": base_cnn.state_dict(), "dense_info": dense_info,
                    "cnn_info": cnn_info, "args": vars(args), "train_s": first_stage_s,
                    "finetune": {**ft, "cnn": cnn.state_dict(), "base_cnn": base_cnn.state_dict(),
                                 "control": control.state_dict() if control is not None else None}},
                   os.path.join(run_dir, "checkpoint-finetuned.pt"))
    train_done = time.time()
    # With --from-checkpoint the figures describe the original training run:
    # its time up to the checkpoint, plus this run's time after it.
    train_s = train_done - t_run
    if args.from_checkpoint:
        train_s = first_stage_s + (train_done - t_run)
        if "finetune" in ck:
            train_s += ft["wall_s"] + ft.get("control_info", {}).get("wall_s", 0)

    # ---- evaluation ---------------------------------------------------------
    models = {"dense": dense, "cnn": cnn}
    if ft:
        models["base"] = base_cnn
        if control is not None:
            models["control"] = control
    xn_te = normalise(x_te)
    test_logits = {k: predict(m, xn_te) for k, m in models.items()}
    y_np = y_te.numpy()
    results = {}
    for k, m in models.items():
        pred = test_logits[k].argmax(1).numpy()
        cm = confusion(pred, y_np)
        results[k] = {
            "params": count_params(m), "macs": count_macs(m),
            "test_acc": float((pred == y_np).mean()),
            "per_class_acc": {data.LABELS[c]: float(cm[c, c] / cm[c].sum()) for c in range(10)},
            "confusion": cm.tolist(),
            "robustness": {name: accuracy(predict(m, normalise(fn(x_te))), y_te) for name, fn in PROBES.items()},
        }
        log_line(log, event="test", model=k, acc=results[k]["test_acc"], robustness=results[k]["robustness"])

    # ---- calibration --------------------------------------------------------
    val_logits = predict(cnn, normalise(x_val)).numpy().astype(np.float64)
    y_val_np = y_val.numpy()
    dev_logits = dev_acc = None
    if rp:
        dev_logits = predict(cnn, normalise(rp["dev"]["x"])).numpy().astype(np.float64)
        dev_acc = rp["dev"]["accept"].numpy()
    # Rounded before use, so the manifest, the fixtures and the figures below
    # all see exactly the temperature the daemon will read. The thresholds
    # are chosen at the same time, on the same held-out data.
    temperature, chosen = fit_review(val_logits, y_val_np, dev_logits, dev_acc, args)
    tl = test_logits["cnn"].numpy().astype(np.float64)
    p_raw, p_cal = calibrate.softmax(tl), calibrate.softmax(tl, temperature)
    calib = {
        "temperature": temperature,
        "ece_before": {"val": calibrate.ece(calibrate.softmax(val_logits), y_val_np),
                       "test": calibrate.ece(p_raw, y_np)},
        "ece_after": {"val": calibrate.ece(calibrate.softmax(val_logits, temperature), y_val_np),
                      "test": calibrate.ece(p_cal, y_np)},
        "nll_before": {"test": calibrate.nll(tl, y_np)},
        "nll_after": {"test": calibrate.nll(tl, y_np, temperature)},
        "bins_before": calibrate.reliability(p_raw, y_np),
        "bins_after": calibrate.reliability(p_cal, y_np),
    }
    if rp:
        # The candidates, what each does to the calibration error, and which one ships.
        calib["alternatives"] = temperature_candidates(val_logits, y_val_np, dev_logits, dev_acc)
        for name, c in calib["alternatives"].items():
            c["ece_test"] = calibrate.ece(calibrate.softmax(tl, c["temperature"]), y_np)
            c["ships"] = c["temperature"] == temperature
        calib["fitted_on"] = next(n for n, c in calib["alternatives"].items() if c["ships"])
        calib["ece_before"]["dev"] = realcal.ece_sets(calibrate.softmax(dev_logits), dev_acc)
        calib["ece_after"]["dev"] = realcal.ece_sets(calibrate.softmax(dev_logits, temperature), dev_acc)
    log_line(log, event="calibration", temperature=temperature, ece_before=calib["ece_before"],
             ece_after=calib["ece_after"])

    # ---- review thresholds --------------------------------------------------
    min_conf, min_margin, per_class = chosen["min_confidence"], chosen["min_margin"], chosen["per_class"]
    chosen_val = chosen["fmnist_val"]
    chosen_test = realcal.review_stats_sets(p_cal, y_np, min_conf, min_margin, per_class)
    table = []
    for c, m in [(0.5, 0.0), (0.6, 0.0), (0.7, 0.0), (0.8, 0.0), (0.9, 0.0), (0.0, 0.2), (0.0, 0.4),
                 (0.6, 0.2), (0.7, 0.3), (min_conf, min_margin)]:
        row = calibrate.review_stats(p_cal, y_np, c, m)
        row["default"] = (c, m) == (min_conf, min_margin)
        if row["default"]:
            row.update(chosen_test)     # the default's figures include its per-class overrides
        if row["default"] or not any(r["min_confidence"] == c and r["min_margin"] == m for r in table):
            table.append(row)
    table = sorted({(r["min_confidence"], r["min_margin"]): r for r in table}.values(),
                   key=lambda r: r["flagged"])
    review = {"budget_val": args.review_budget, "chosen_on_val": chosen_val, "on_test": chosen_test,
              "table_test": table,
              "per_class": {data.LABELS[int(k)]: v for k, v in sorted(per_class.items())}}
    if rp:
        review["budget_real_dev"] = args.review_budget_real
        review["chosen_on_real_dev"] = chosen["real_dev"]
        review["fmnist_floor"] = chosen["fmnist_floor"]
        review["real_budget_met"] = chosen["real_budget_met"]
        # The rule of a Fashion-MNIST-only model, for comparison: the best
        # pair on the validation split alone, whatever it does to photos.
        p_dev = calibrate.softmax(dev_logits, temperature)
        alone = calibrate.choose_thresholds(calibrate.softmax(val_logits, temperature), y_val_np, args.review_budget)
        review["fmnist_only_rule"] = {
            "min_confidence": alone["min_confidence"], "min_margin": alone["min_margin"],
            "on_test": realcal.review_stats_sets(p_cal, y_np, alone["min_confidence"], alone["min_margin"]),
            "on_real_dev": realcal.review_stats_sets(p_dev, dev_acc, alone["min_confidence"], alone["min_margin"])}
        review["joint_rule"] = {"on_test": chosen_test,
                                "on_real_dev": realcal.review_stats_sets(p_dev, dev_acc, min_conf, min_margin,
                                                                         per_class)}
    log_line(log, event="review", chosen_on_val=chosen_val, on_test=chosen_test)

    # ---- export -------------------------------------------------------------
    onnx_path = os.path.join(out_dir, "model.onnx")
    export.export_onnx(cnn, onnx_path)
    check = export.check_against_torch(onnx_path, cnn, xn_te.numpy(), y_np)
    sha = export.file_sha256(onnx_path)
    lat = [export.latency(onnx_path, xn_te.numpy(), b) for b in (1, 64)]
    exp = {"opset": export.OPSET, "bytes": os.path.getsize(onnx_path), "sha256": sha,
           "check": check, "latency": lat}
    log_line(log, event="export", bytes=exp["bytes"], sha256=sha, check=check, latency=lat)

    # ---- fixtures -----------------------------------------------------------
    # The daemon's own path: 8-bit PNG -> pixel/255 -> (x - mean)/std -> ONNX
    # -> logits / T -> softmax. The PNGs are read back, not reused from memory.
    sess = export.session(onnx_path, threads=1)
    fixtures = []
    for i in range(fixtures_n):
        fname = f"test-{i:04d}.png"
        write_png_gray(os.path.join(fix_dir, fname), d["test_images"][i])
        px = read_png_gray(os.path.join(fix_dir, fname)).astype(np.float32) / np.float32(255.0)
        x = ((px - np.float32(MEAN)) / np.float32(STD)).reshape(1, 1, 28, 28).astype(np.float32)
        logits = export.ort_logits(sess, x)[0]
        probs = calibrate.softmax(logits[None], temperature)[0]
        pred = int(np.argmax(probs))
        fixtures.append({"file": fname, "true_label": int(d["test_labels"][i]), "predicted": pred,
                         "predicted_name": data.LABELS[pred],
                         "probabilities": [round(float(p), 5) for p in probs]})
    with open(os.path.join(fix_dir, "expected.json"), "w") as f:
        json.dump({"model_sha256": sha, "images": fixtures}, f, indent=2)
        f.write("\n")

    # ---- manifest, metrics, card ---------------------------------------------
    write_model_toml(os.path.join(out_dir, "model.toml"), sha, temperature, min_conf, min_margin,
                     args.model_version, args.preprocessing, per_class)
    metrics = {
        "command": "make -C training train" + (" DATA=DIR" if args.data else "")
                   + (" REAL=DIR" if args.real else "") + (" EVAL=DIR" if args.eval_photos else ""),
        "python_command": reproduce_command(args),
        "args": {k: v for k, v in vars(args).items() if k not in LOCAL_PATHS},
        "smoke_run": bool(args.limit),
        "environment": {
            "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "onnx": export.onnx.__version__, "onnxruntime": export.ort.__version__,
        },
        "data": {"train": len(x_tr), "val": len(x_val), "test": len(x_te),
                 "files": {v[0]: v[1] for v in data.FILES.values()}},
        "preprocessing": {"mean": MEAN, "std": STD, "name": args.preprocessing},
        "labels": data.LABELS,
        "dense": {**results["dense"], **{k: v for k, v in dense_info.items()}},
        "cnn": {**results["cnn"], **{k: v for k, v in cnn_info.items()},
                "widths": list(widths_t), "depth": args.depth, "bf16": bool(args.bf16),
                "channels_last": bool(args.channels_last)},
        "calibration": calib,
        "review": review,
        "export": exp,
        "fixtures": fixtures,
        "timing": {"train_s": round(train_s, 1), "from_checkpoint": bool(args.from_checkpoint),
                   "total_s": None},  # filled in just below, after the plots
    }
    if rp:
        metrics["real_photos"] = real_photo_figures(args, rp, ft, models, results, val_logits, y_val_np, x_val,
                                                    y_val, run_dir, out_dir, xn_te.numpy(), y_np, log)
        scene = metrics["real_photos"].pop("scene_review", None)
        if scene:
            metrics["review"]["scene"] = scene
    report.plots(metrics, out_dir)
    metrics["timing"]["total_s"] = round(train_s + time.time() - train_done, 1)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
        f.write("\n")
    report.write_card(metrics, out_dir)
    log_line(log, event="done", total_s=metrics["timing"]["total_s"], cnn_test_acc=results["cnn"]["test_acc"],
             dense_test_acc=results["dense"]["test_acc"])
    log.close()
    with open(os.path.join(out_dir, "train_log.jsonl"), "w") as f:
        for r in dense_info["history"] + cnn_info["history"]:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
