"""Labelled real photos, already converted to 28x28 by `tagd convert`, and
the pieces of training that are specific to them.

A photo's label is a cell of `labels.csv` that lists every acceptable class,
joined by `|` (`5|7|9` is footwear of unknown kind). Such a label is trained
with the set-valued loss -log(sum of p over the acceptable classes): the
network is free to spread its belief inside the set, and is only pushed
away from the classes outside it. A single class is the ordinary
cross-entropy.

The folder read here is what `make -C training real-photos` writes: one PNG
per photo, named after the photo's stem, plus a copy of `labels.csv`.
"""

import csv
import io
import os

import numpy as np
import torch
import torch.nn.functional as F

N_CLASSES = 10


class LabelError(ValueError):
    """A labels.csv that cannot be read as this module expects."""


def _simplify(name):
    return "".join(ch for ch in name if ch.isascii() and ch.isalnum()).lower()


def parse_label_cell(cell, labels=None):
    """`"5|7|9"` -> (5, 7, 9): the acceptable classes in the order listed.

    The same rule as `tagd eval`: each part is a class index or a label name
    (`Ankle boot`, `ankle-boot` and `ankle_boot` all match), a class listed
    twice counts once, and spaces and a stray carriage return are ignored.
    An empty cell or part, or an unknown class, is an error.
    """
    from fmnist.data import LABELS

    labels = labels or LABELS
    text = str(cell).strip()
    if not text:
        raise LabelError("empty label cell")
    out = []
    for part in text.split("|"):
        part = part.strip()
        if part.isdigit():
            k = int(part)
            if k >= len(labels):
                raise LabelError(f"label cell {cell!r}: class {k} is out of range (0-{len(labels) - 1})")
        else:
            names = [_simplify(l) for l in labels]
            if not part or _simplify(part) not in names:
                raise LabelError(f"label cell {cell!r}: {part!r} is neither a class index nor a label")
            k = names.index(_simplify(part))
        if k not in out:
            out.append(k)
    return tuple(out)


def read_labels_csv(path):
    """Rows of a labels.csv as dicts {file, labels (tuple), cell, source}.

    Line ends may be LF or CRLF, and the file may start with a byte-order mark.
    """
    with open(path, "rb") as f:
        text = f.read().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text.replace("\r\n", "\n").replace("\r", "\n"))))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise LabelError(f"{path}: empty")
    header = [c.strip() for c in rows[0]]
    for need in ("file", "fmnist_labels"):
        if need not in header:
            raise LabelError(f"{path}: the header has no `{need}` column (it has: {', '.join(header)})")
    i_file, i_lab = header.index("file"), header.index("fmnist_labels")
    i_src = header.index("source_label") if "source_label" in header else None
    out = []
    for n, r in enumerate(rows[1:], start=2):
        try:
            labels = parse_label_cell(r[i_lab])
        except (LabelError, IndexError) as e:
            raise LabelError(f"{path}, line {n}: {e}") from None
        out.append({"file": r[i_file].strip(), "labels": labels, "cell": "|".join(map(str, labels)),
                    "source": r[i_src].strip() if i_src is not None and i_src < len(r) else ""})
    return out


def accept_mask(label_sets, n_classes=N_CLASSES):
    """Boolean [N, n_classes]: True where a class is acceptable for a photo."""
    m = np.zeros((len(label_sets), n_classes), dtype=bool)
    for i, s in enumerate(label_sets):
        m[i, list(s)] = True
    return m


def load_converted(folder, labels_csv=None):
    """The converted photos of `folder` and their labels.

    Returns {images: uint8 [N, 28, 28], accept: bool [N, 10], cells: [str],
    files: [str]} in labels.csv order. A photo listed but not converted is an
    error that names it.
    """
    from PIL import Image

    labels_csv = labels_csv or os.path.join(folder, "labels.csv")
    rows = read_labels_csv(labels_csv)
    images, missing = [], []
    for r in rows:
        png = os.path.join(folder, os.path.splitext(r["file"])[0] + ".png")
        if not os.path.exists(png):
            missing.append(r["file"])
            continue
        with Image.open(png) as im:
            if im.mode != "L" or im.size != (28, 28):
                raise ValueError(f"{png}: expected a 28x28 8-bit grayscale PNG, got {im.mode} {im.size}")
            images.append(np.asarray(im, dtype=np.uint8))
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} photos of {labels_csv} are not converted, "
                                f"e.g. {missing[0]} (run `make -C training real-photos`)")
    return {"images": np.stack(images), "accept": accept_mask([r["labels"] for r in rows]),
            "cells": [r["cell"] for r in rows], "files": [r["file"] for r in rows]}


def stratified_split(cells, frac, seed):
    """(train, dev) index arrays: `frac` of each label cell, rounded, held out,
    at least one photo of every cell that has two or more. Fixed by `seed`."""
    rng = np.random.default_rng(seed)
    cells = np.asarray(cells)
    dev = []
    for c in sorted(set(cells.tolist())):
        idx = np.flatnonzero(cells == c)
        k = int(round(frac * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        dev.extend(rng.permutation(idx)[:k].tolist())
    dev = np.sort(np.array(dev, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(cells)), dev)
    return train, dev


def balanced_weights(cells):
    """Sampling weight per photo so that every label cell is drawn equally
    often: 1 / (photos with that cell), normalised to sum to 1."""
    cells = np.asarray(cells)
    uniq, inv, counts = np.unique(cells, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inv]
    return w / w.sum()


def set_nll(logits, accept, smoothing=0.0):
    """Per-sample loss: -(1 - s) log(sum over acceptable classes of p) - s mean_c log p_c.

    With one acceptable class this is exactly F.cross_entropy with
    label_smoothing=s. `accept` is bool [N, C].
    """
    logp = F.log_softmax(logits.float(), dim=1)
    in_set = torch.logsumexp(logp.masked_fill(~accept, float("-inf")), dim=1)
    loss = -in_set
    if smoothing:
        loss = (1.0 - smoothing) * loss - smoothing * logp.mean(dim=1)
    return loss


def set_correct(pred, accept):
    """Bool per sample: the predicted class is one of the acceptable ones."""
    pred = torch.as_tensor(pred)
    accept = torch.as_tensor(accept)
    return accept[torch.arange(len(pred)), pred]


class MixedBatches:
    """Draws training batches that mix Fashion-MNIST and real photos.

    Each batch holds `n_fmnist` Fashion-MNIST images, drawn uniformly except
    that Bag (class 8) is drawn `bag_boost` times as often as the others, and
    `n_real` real photos drawn with replacement, each label cell equally
    often (the photos hold five times more T-shirts than hoodies; drawn as
    they come, the net learns to say T-shirt). Bag is the class the real
    photos never show: without the boost the net learns that a real-looking
    image is never a bag.

    Returns (fmnist_idx, real_idx) per draw; the caller gathers and augments.
    """

    def __init__(self, fmnist_labels, real_cells, n_fmnist, n_real, gen, bag_boost=1.0, bag_class=8):
        y = np.asarray(fmnist_labels)
        w = np.where(y == bag_class, float(bag_boost), 1.0)
        self.p_fmnist = torch.as_tensor(w / w.sum(), dtype=torch.float64)
        self.p_real = (torch.as_tensor(balanced_weights(real_cells), dtype=torch.float64)
                       if n_real and len(real_cells) else None)
        self.n_fmnist, self.n_real, self.gen = n_fmnist, n_real if self.p_real is not None else 0, gen

    def draw(self):
        fi = torch.multinomial(self.p_fmnist, self.n_fmnist, replacement=True, generator=self.gen)
        ri = (torch.multinomial(self.p_real, self.n_real, replacement=True, generator=self.gen)
              if self.n_real else torch.zeros(0, dtype=torch.long))
        return fi, ri
