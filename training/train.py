"""Train, calibrate, export and document the Fashion-MNIST tagger.

One run does everything, top to bottom:
  data -> dense baseline -> CNN -> evaluation and robustness probes ->
  temperature -> review thresholds -> ONNX export and checks -> fixtures ->
  model.toml, metrics.json, MODEL_CARD.md

    python train.py --data DIR                 # the full, reproducible run
    python train.py --epochs 1 --limit 2000    # a smoke run, a minute or two

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

from fmnist import calibrate, data, export, report
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
epochs = 22
batch = 128
lr = 3e-3                # OneCycle peak
weight_decay = 0.05      # AdamW, decoupled
label_smoothing = 0.1
widths = "32,64,128"     # channels at 28x28, 14x14 and 7x7
depth = 2                # convs at 14x14 and at 7x7
bf16 = True              # CPU autocast: bf16 convs were ~1.5-2x faster here; weights stay fp32
channels_last = True
# review: images flagged on the validation split, at most (the target on test is 10%)
review_budget = 0.095
model_version = "1"
fixtures_n = 12
# -----------------------------------------------------------------------------


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
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--weight-decay", type=float, default=weight_decay)
    p.add_argument("--label-smoothing", type=float, default=label_smoothing)
    p.add_argument("--widths", default=widths)
    p.add_argument("--depth", type=int, default=depth)
    p.add_argument("--bf16", type=int, default=int(bf16), choices=[0, 1])
    p.add_argument("--channels-last", type=int, default=int(channels_last), choices=[0, 1])
    p.add_argument("--review-budget", type=float, default=review_budget)
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
                smoothing, use_bf16, use_cl, gen, log):
    """Minibatch training on in-memory tensors (pixels in [0, 1]); keeps the
    weights of the epoch with the best validation accuracy."""
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    n = len(x_tr)
    best = {"val_acc": -1.0}
    history = []
    t_start = time.time()
    for epoch in range(1, epochs + 1):
        model.train()
        t0, c0 = time.time(), time.process_time()
        perm = torch.randperm(n, generator=gen)
        tot_loss, tot_correct, seen = 0.0, 0, 0
        for i in range(0, n - batch + 1, batch):   # drop the ragged last batch: BN dislikes tiny ones
            idx = perm[i:i + batch]
            xb, yb = x_tr[idx], y_tr[idx]
            if use_aug:
                xb = augment(xb, gen)
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
            tot_loss += float(loss.detach()) * len(yb)
            tot_correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
        train_wall, train_cpu = time.time() - t0, time.process_time() - c0
        val_logits = predict(model, normalise(x_val))
        rec = {
            "model": name, "epoch": epoch,
            "train_loss": round(tot_loss / seen, 5), "train_acc": round(tot_correct / seen, 5),
            "val_loss": round(float(F.cross_entropy(val_logits, y_val)), 5),
            "val_acc": round(accuracy(val_logits, y_val), 5),
            "lr": opt.param_groups[0]["lr"],
            "train_wall_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1),
            "epoch_wall_s": round(time.time() - t0, 1),
        }
        history.append(rec)
        log_line(log, **rec)
        if rec["val_acc"] > best["val_acc"]:
            best = {"val_acc": rec["val_acc"], "epoch": epoch,
                    "state": copy.deepcopy(model.state_dict())}
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


def write_model_toml(path, sha, temperature, min_conf, min_margin, version):
    labels = ", ".join(json.dumps(l) for l in data.LABELS)
    text = f"""# written by training/train.py; do not edit by hand
name = "fashion-mnist"
version = "{version}"                        # bump per release
onnx_file = "model.onnx"
sha256 = "{sha}"
preprocessing = "fmnist-v1"
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
"""
    with open(path, "w") as f:
        f.write(text)


def reproduce_command(args):
    """The train.py command line that gives these nets: every option that is
    not at its default, with the data folder (a local path) left as DIR."""
    defaults = vars(parse_args([]))
    parts = ["python train.py"] + (["--data DIR"] if args.data else [])
    for k, v in vars(args).items():
        if k in ("data", "out", "fixtures", "runs", "from_checkpoint") or v == defaults[k]:
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


def main(argv=None):
    args = parse_args(argv)
    t_run = time.time()
    ck = None
    if args.from_checkpoint:
        ck = torch.load(args.from_checkpoint, map_location="cpu", weights_only=False)
        # The nets and the card must describe how they were trained, not this
        # command line; only what comes after training may be changed.
        for k, v in ck["args"].items():
            if k not in ("data", "out", "fixtures", "runs", "from_checkpoint", "review_budget", "model_version"):
                setattr(args, k, v)
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

    widths_t = tuple(int(w) for w in args.widths.split(","))
    torch.manual_seed(args.seed)
    dense = DenseNet()
    torch.manual_seed(args.seed)
    cnn = CNN(widths=widths_t, depth=args.depth)

    # ---- training -----------------------------------------------------------
    if args.from_checkpoint:
        dense.load_state_dict(ck["dense"])
        cnn.load_state_dict(ck["cnn"])
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
            use_cl=bool(args.channels_last), gen=gen, log=log)
        torch.save({"dense": dense.state_dict(), "cnn": cnn.state_dict(), "dense_info": dense_info,
                    "cnn_info": cnn_info, "args": vars(args), "train_s": time.time() - t_run},
                   os.path.join(run_dir, "checkpoint.pt"))
    train_done = time.time()
    # With --from-checkpoint the figures describe the original training run:
    # its time up to the checkpoint, plus this run's time after it.
    train_s = train_done - t_run
    if args.from_checkpoint:
        train_s = ck.get("train_s", dense_info["train_wall_s"] + cnn_info["train_wall_s"])

    # ---- evaluation ---------------------------------------------------------
    models = {"dense": dense, "cnn": cnn}
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
    # Rounded before use, so the manifest, the fixtures and the figures below
    # all see exactly the temperature the daemon will read.
    temperature = round(calibrate.fit_temperature(val_logits, y_val_np), 4)
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
    log_line(log, event="calibration", temperature=temperature, ece_before=calib["ece_before"],
             ece_after=calib["ece_after"])

    # ---- review thresholds --------------------------------------------------
    p_val = calibrate.softmax(val_logits, temperature)
    chosen_val = calibrate.choose_thresholds(p_val, y_val_np, args.review_budget)
    min_conf, min_margin = chosen_val["min_confidence"], chosen_val["min_margin"]
    chosen_test = calibrate.review_stats(p_cal, y_np, min_conf, min_margin)
    table = []
    for c, m in [(0.5, 0.0), (0.6, 0.0), (0.7, 0.0), (0.8, 0.0), (0.9, 0.0), (0.0, 0.2), (0.0, 0.4),
                 (0.6, 0.2), (0.7, 0.3), (min_conf, min_margin)]:
        row = calibrate.review_stats(p_cal, y_np, c, m)
        row["default"] = (c, m) == (min_conf, min_margin)
        if row["default"] or not any(r["min_confidence"] == c and r["min_margin"] == m for r in table):
            table.append(row)
    table = sorted({(r["min_confidence"], r["min_margin"]): r for r in table}.values(),
                   key=lambda r: r["flagged"])
    review = {"budget_val": args.review_budget, "chosen_on_val": chosen_val, "on_test": chosen_test,
              "table_test": table}
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
                     args.model_version)
    metrics = {
        "command": "make -C training train" + (" DATA=DIR" if args.data else ""),
        "python_command": reproduce_command(args),
        "args": {k: v for k, v in vars(args).items() if k not in ("data", "out", "fixtures", "runs")},
        "smoke_run": bool(args.limit),
        "environment": {
            "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "onnx": export.onnx.__version__, "onnxruntime": export.ort.__version__,
        },
        "data": {"train": len(x_tr), "val": len(x_val), "test": len(x_te),
                 "files": {v[0]: v[1] for v in data.FILES.values()}},
        "preprocessing": {"mean": MEAN, "std": STD},
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
