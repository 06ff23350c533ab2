"""The model card's "Real photos" section, written from metrics.json alone
(metrics["real_photos"], filled in by train.py when it was given --real)."""

STEP_NAMES = {
    "border": "background from the whole border (off: the four corners)",
    "mask": "Otsu object mask (off: keep everything that differs from the background)",
    "plain": "the paper's trim on a plain studio backdrop (off: the mask there too)",
    "sides": "a backdrop plain on three sides counts as plain (off: all four sides must be)",
    "clean": "a border of backdrop and object, with little in between, counts as a plain backdrop",
    "garment": "a worn garment cut out of the model wearing it (off: the whole figure)",
    "body": "the worn garment kept to the rows from the shoulders to the hem",
    "blank": "background blanked to black",
    "area": "area-averaging resize",
    "sharpen": "the paper's 3x3 unsharp mask",
    "stretch": "the 28x28 image stretched to span 0 to 255, as every Fashion-MNIST image does",
}
SET_NAMES = {"product": "product (shop photos)", "wild": "wild (phone photos)", "dev": "clothing-train dev split"}
COLUMNS = [("before-v1", "before, fmnist-v1"), ("before-v2", "before, fmnist-v2"), ("before-v3", "before, fmnist-v3"),
           ("control", "Fashion-MNIST-only fine-tuning"), ("ships", "**ships**")]


def pct(x, digits=1):
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _targets(m, rp, t):
    """(target, figure, met) rows; figures missing from this run are left out."""
    rows = []
    cnn, cal, rev, exp = m["cnn"], m["calibration"], m["review"], m["export"]
    rows.append(("Fashion-MNIST test accuracy >= 94.0%", pct(cnn["test_acc"], 2), cnn["test_acc"] >= 0.94))
    rows.append(("ECE after temperature < 2% (Fashion-MNIST test)", pct(cal["ece_after"]["test"], 2),
                 cal["ece_after"]["test"] < 0.02))
    rb = cnn["robustness"]
    worst = min(rb[p] - rb["clean"] for p in rb)
    rows.append(("robustness probes within 4 points of clean", f"worst {100 * worst:+.2f}", worst >= -0.04))
    lat = exp["latency"][0]["ms_per_image"]
    rows.append(("latency <= 1 ms per image at batch 1", f"{lat:.3f} ms", lat <= 1.0))
    rows.append(("ONNX file < 5 MB", f"{exp['bytes'] / 1e6:.2f} MB", exp["bytes"] < 5e6))
    ot = rev["on_test"]
    rows.append(("Fashion-MNIST test flagged <= 10%", pct(ot["flagged"]), ot["flagged"] <= 0.10))
    rows.append(("Fashion-MNIST test errors caught >= 60%", pct(ot["errors_caught"]), ot["errors_caught"] >= 0.60))
    if not t:
        return rows
    ships = t["models"]["ships"]
    for s, acc_t, bag_t, unfl_t in (("product", 0.85, 0.02, 0.95), ("wild", 0.60, 0.05, 0.85)):
        if s not in ships:
            continue
        r = ships[s]
        rows.append((f"{s}: accuracy >= {acc_t:.0%}", pct(r["accuracy"]), r["accuracy"] >= acc_t))
        fb = r["footwear_called_bag_rate"] or 0.0
        rows.append((f"{s}: footwear called Bag < {bag_t:.0%}", pct(fb), fb < bag_t))
        rows.append((f"{s}: flagged <= 40%", pct(r["flagged_share"]), r["flagged_share"] <= 0.40))
        ua = r["unflagged_accuracy"]
        rows.append((f"{s}: accuracy on unflagged photos >= {unfl_t:.0%}", pct(ua), ua is not None and ua >= unfl_t))
    return rows


def section(m):
    """Markdown lines; empty when the run had no real photos."""
    rp = m.get("real_photos")
    if not rp:
        return []
    a, labels = m["args"], m["labels"]
    L = []
    w = L.append
    sp, py, ft, t = rp["split"], rp["python"], rp["finetune"], rp.get("tagd")
    info = ft["info"]
    w("## Real photos")
    w("")
    w(f"Fashion-MNIST is clean, centred and tiny; photos are not. After the first stage the CNN was fine-tuned "
      f"on real photos: the CC0 phone photos of the Clothing dataset (Alexey Grigorev, "
      f"github.com/alexeygrigorev/clothing-dataset, CC0 1.0), converted to 28x28 by `tagd convert` with "
      f"`{m['preprocessing']['name']}`, the daemon's own conversion, so training sees exactly what the daemon "
      f"feeds the model. Their labels may list several acceptable classes (`5|7|9` is footwear of unknown "
      f"kind, `0|2` a long-sleeve top); there are no bags. {sp['train'] + sp['dev']:,} photos: "
      f"{sp['train']:,} for training and {sp['dev']:,} ({sp['dev_frac']:.0%} of each label cell, fixed seed) "
      f"held out as the dev split, used for early stopping, the temperature and the review thresholds. "
      f"The photos are not in the repository; `make -C training train REAL=DIR` converts them.")
    w("")
    w(f"Fine-tuning ({info['steps']} steps from the first-stage weights, {ft['wall_s'] / 60:.1f} min): each "
      f"batch holds {a['ft_fmnist']} Fashion-MNIST images, with the first stage's augmentation"
      + (f" at {a['ft_fmnist_strength']:g} of its strength" if a.get("ft_fmnist_strength", 1.0) != 1.0 else "")
      + f", Bag drawn "
      f"{a['ft_bag_boost']:g} times as often as another class, and {a['ft_real']} real photos, each label cell "
      f"drawn equally often, lightly augmented (mirror, shift up to 2 px, scale 0.9-1.1, rotation up to 5 "
      f"degrees, intensity 0.8-1.2). "
      + (f"{a['ft_photo_p']:.0%} of the Fashion-MNIST images also get photo-like defects (ragged mask edges, "
         f"blotches, a floor patch, shear, gamma, grain). " if a["ft_photo_p"] else "")
      + f"Loss: the Fashion-MNIST images' mean cross-entropy (label smoothing {a['label_smoothing']}) plus "
      f"{a['ft_real_weight']:g} x the real photos' mean set-valued loss, -log(sum of p over the acceptable "
      f"classes); the Fashion-MNIST term keeps its full weight, so Bag, which the real photos never show, is "
      f"not traded away. "
      + (f"Distillation weight {a['ft_distill']:g} towards the first-stage net on the Fashion-MNIST images. "
         if a["ft_distill"] else "")
      + (f"The weights kept are an exponential moving average (decay {a['ft_ema']:g}). " if a["ft_ema"] else "")
      + f"AdamW, OneCycle peaking at {a['ft_lr']:g}; the {info['steps']} steps make {info['real_passes']:.0f} "
      f"passes over the real training photos and {info['fmnist_epochs']:.1f} Fashion-MNIST epochs. Kept: step "
      f"{info['best_step']}, the best mean of Fashion-MNIST validation accuracy and dev accuracy among the "
      f"evaluation points (every {a['ft_eval_every']} steps) whose Bag recall on photo-like validation bags "
      f"stayed within {a['ft_bag_guard']:.0%} of the first stage's (photo-like bags stand in for photographed "
      f"ones, which the real photos lack; {pct(info['start_eval'].get('photo_bag_recall'))} before, "
      f"{pct(info['best_eval'].get('photo_bag_recall'))} at the step kept)"
      + (f" and whose Fashion-MNIST validation accuracy stayed within {100 * a['ft_fmnist_guard']:.1f} points of "
         f"the first stage's ({pct(info['start_eval']['val_acc'])} before, {pct(info['best_eval']['val_acc'])} "
         f"at the step kept)" if a.get("ft_fmnist_guard", 1.0) < 1.0 else "")
      + ". The control, "
      f"\"Fashion-MNIST-only fine-tuning\", runs the same steps without the real photos and keeps its best "
      f"step by validation accuracy alone"
      + ((" (step 0: by validation accuracy, the extra training does not beat the first stage, so the control "
          "is the first-stage net; it differs from \"before\" only by its temperature and thresholds, chosen "
          "as for the net that ships)." if ft["control_info"]["best_step"] == 0
          else f" (step {ft['control_info']['best_step']}).") if "control_info" in ft else "."))
    w("")
    names = [("base", "before"), ("control", "Fashion-MNIST-only fine-tuning"), ("cnn", "**ships**")]
    names = [(k, n) for k, n in names if k in py]
    w("### Fashion-MNIST and the dev split (PyTorch, on the converted photos)")
    w("")
    w("| | " + " | ".join(n for _, n in names) + " |")
    w("|---|" + "---|" * len(names))
    w("| Fashion-MNIST test accuracy | " + " | ".join(pct(py[k]["test_acc"], 2) for k, _ in names) + " |")
    w("| Fashion-MNIST test Bag recall | " + " | ".join(pct(py[k]["test_bag_recall"]) for k, _ in names) + " |")
    w("| dev accuracy | " + " | ".join(pct(py[k]["dev"]["accuracy"]) for k, _ in names) + " |")
    w("| dev footwear called Bag | " + " | ".join(
        f"{py[k]['dev']['footwear_called_bag']} of {py[k]['dev']['footwear_photos']}" for k, _ in names) + " |")
    for cls in py["cnn"]["dev"]["per_class"]:
        n = py["cnn"]["dev"]["per_class"][cls]["photos"]
        w(f"| dev {cls} ({n}) | " + " | ".join(pct(py[k]["dev"]["per_class"][cls]["accuracy"]) for k, _ in names)
          + " |")
    w("")
    w("Dev rows per class go by the first listed label: `0|2` long-sleeve tops count under T-shirt/top, "
      "`2|4` hoodies under Pullover, `5|7|9` footwear under Sandal.")
    w("")
    if not t:
        w("tagd's own figures on labelled photos were not measured in this run (no `EVAL=DIR`).")
        w("")
        return L
    sets = [s for s in ("product", "wild", "dev") if s in t["sets"]]
    cols = [(k, n) for k, n in COLUMNS if k in t["models"]]
    w("### Before and after, measured by `tagd eval`")
    w("")
    w("Each model folder run through the daemon's own decoding, conversion, calibration and review rules "
      "(`tagd eval --json`, built-in review settings). \"Before\" is the first-stage CNN as it shipped before "
      "this fine-tuning (temperature and thresholds fitted on Fashion-MNIST alone), with the old and the new "
      "conversion. The evaluation photos (`product/`, `wild/`) were never used for training, early stopping, "
      "calibration or thresholds; only the run's figures come from them.")
    w("")
    if t.get("remeasured"):
        r = t["remeasured"]
        w(f"The **ships** column, the ablation and the contact sheet were measured again on {r['date']}, when "
          f"the conversion moved from `{r['from']}` to `{r['to']}` (`{r['command']}`). The move changes none of "
          f"the photos the model was fine-tuned on (checked byte for byte), so its weights, temperature and "
          f"thresholds are still the training run's; the other columns are the training run's figures, each with "
          f"the conversion its header names (the control with `{r['from']}`).")
        w("")
    w("| set | figure | " + " | ".join(n for _, n in cols) + " |")
    w("|---|---|" + "---|" * len(cols))
    for s in sets:
        n = t["sets"][s]["photos"]
        rows = [("accuracy", lambda r: pct(r["accuracy"])),
                ("footwear called Bag", lambda r: f"{pct(r['footwear_called_bag_rate'])} "
                                                  f"({r['footwear_called_bag']} of {r['footwear_photos']})"),
                ("flagged", lambda r: pct(r["flagged_share"])),
                ("accuracy, unflagged", lambda r: pct(r["unflagged_accuracy"])),
                ("flagged `tiny_image`", lambda r: pct(max(0.0, r["flagged_share"] - r["flagged_share_without_tiny"])))]
        for i, (fig, fn) in enumerate(rows):
            label = f"{SET_NAMES[s]}, {n}" if i == 0 else ""
            w(f"| {label} | {fig} | " + " | ".join(fn(t["models"][k][s]) for k, _ in cols) + " |")
    w("")
    w("`tiny_image` is the daemon's photo-size rule (shorter edge under `review.tiny_image_edge_px`, 32 px by "
      "default), not a model threshold; the row \"flagged `tiny_image`\" is the share it flags that the model's "
      "and the conversion's own reasons (`low_confidence`, `small_margin`, `no_object`, `low_contrast`) "
      "would not. Up to version 2 the default was 64 px, which flagged every 60x80 shop photo.")
    w("")
    w("### Per class, measured by `tagd eval`")
    w("")
    for s in sets:
        w(f"{SET_NAMES[s]} (by the first listed label):")
        w("")
        w("| class | photos | " + " | ".join(n for _, n in cols) + " |")
        w("|---|---|" + "---|" * len(cols))
        for cls in labels:
            pc = t["models"]["ships"][s]["per_class"].get(cls)
            if not pc or not pc["photos"]:
                continue
            w(f"| {cls} | {pc['photos']} | " + " | ".join(
                pct(t["models"][k][s]["per_class"][cls]["accuracy"]) for k, _ in cols) + " |")
        w("")
    if t.get("ablation"):
        w("### Ablation: each conversion step turned off (`tagd eval --without STEP`) or, for a step the "
          "conversion leaves out, on (`--with STEP`), with the model that ships")
        w("")
        abl_sets = list(t["ablation"])
        w("| conversion | " + " | ".join(f"{s} accuracy | {s} footwear called Bag" for s in abl_sets) + " |")
        w("|---|" + "---|---|" * len(abl_sets))
        for row in t["ablation"][abl_sets[0]]:
            flag, _, step = row.partition(" ")
            name = "all steps" if row == "all steps" else f"{flag} {STEP_NAMES.get(step, step)}"
            w(f"| {name} | " + " | ".join(
                f"{pct(t['ablation'][s][row]['accuracy'])} | {pct(t['ablation'][s][row]['footwear_called_bag_rate'])}"
                for s in abl_sets) + " |")
        w("")
    if t.get("sheet"):
        sh = t["sheet"]
        w(f"### Mistakes on the wild set's CC0 photos")
        w("")
        w(f"`{sh['file']}`: the {sh['mistakes']} mistakes of the model that ships on the {sh['photos']} CC0 photos "
          f"of the wild set (Clothing dataset, CC0 1.0; the set's other photos have licences that keep them out "
          f"of this repository), each photo beside the 28x28 image the model saw, drawn by `tagd eval --sheet`.")
        w("")
        w(f"![mistakes on real photos]({sh['file']})")
        w("")
    w("### Targets")
    w("")
    w("| target | this model | met |")
    w("|---|---|---|")
    for name, fig, ok in _targets(m, rp, t):
        w(f"| {name} | {fig} | {'yes' if ok else '**no**'} |")
    w("")
    return L
