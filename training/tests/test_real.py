import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fmnist import finetune, photoaug, real
from fmnist.model import CNN


def test_label_cell_parser():
    assert real.parse_label_cell("3") == (3,)
    assert real.parse_label_cell("5|7|9") == (5, 7, 9)
    assert real.parse_label_cell(" 2|4\r") == (2, 4)
    # The rule of `tagd eval`: label names too, and a repeat counts once.
    assert real.parse_label_cell("Bag|ankle-boot|T-shirt/top") == (8, 9, 0)
    assert real.parse_label_cell("1|1") == (1,)
    for bad in ("", "10", "a", "1||2", "-1", "Hat"):
        with pytest.raises(real.LabelError):
            real.parse_label_cell(bad)


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_labels_csv_with_either_line_end(tmp_path, eol):
    rows = ["file,fmnist_labels,source_label", "a.jpg,0,label=T-Shirt", "b.jpg,5|7|9,label=Shoes",
            "c.jpg,0|2,label=Longsleeve", ""]
    p = tmp_path / "labels.csv"
    p.write_bytes(eol.join(rows).encode())
    got = real.read_labels_csv(p)
    assert [r["file"] for r in got] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [r["labels"] for r in got] == [(0,), (5, 7, 9), (0, 2)]
    assert [r["cell"] for r in got] == ["0", "5|7|9", "0|2"]
    assert got[1]["source"] == "label=Shoes"          # no stray \r at the end of the row


def test_labels_csv_errors_name_the_line(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("file,fmnist_labels\na.jpg,0\nb.jpg,12\n")
    with pytest.raises(real.LabelError, match="line 3"):
        real.read_labels_csv(p)
    p.write_text("file,label\na.jpg,0\n")
    with pytest.raises(real.LabelError, match="fmnist_labels"):
        real.read_labels_csv(p)


def test_load_converted_reads_pngs_in_csv_order(tmp_path):
    from PIL import Image
    for i, name in enumerate(["x", "y"]):
        Image.fromarray(np.full((28, 28), 10 * (i + 1), np.uint8), mode="L").save(tmp_path / f"{name}.png")
    (tmp_path / "labels.csv").write_text("file,fmnist_labels\r\ny.jpg,1\r\nx.jpg,5|7|9\r\n")
    d = real.load_converted(str(tmp_path))
    assert d["images"].shape == (2, 28, 28) and d["images"][0, 0, 0] == 20
    assert d["accept"].tolist()[1] == [False] * 5 + [True, False, True, False, True]
    (tmp_path / "labels.csv").write_text("file,fmnist_labels\nz.jpg,1\n")
    with pytest.raises(FileNotFoundError, match="z.jpg"):
        real.load_converted(str(tmp_path))


def test_set_loss_on_a_toy_example():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p = torch.softmax(logits, 1)[0]
    accept = torch.tensor([[False, True, True, False]])
    got = real.set_nll(logits, accept)
    assert float(got) == pytest.approx(-math.log(float(p[1] + p[2])), rel=1e-6)
    # A set holding every class costs nothing; one class is plain cross-entropy,
    # with and without label smoothing.
    assert float(real.set_nll(logits, torch.ones(1, 4, dtype=torch.bool))) == pytest.approx(0.0, abs=1e-6)
    one = torch.tensor([[False, False, True, False]])
    for s in (0.0, 0.1):
        want = F.cross_entropy(logits, torch.tensor([2]), label_smoothing=s)
        assert float(real.set_nll(logits, one, s)) == pytest.approx(float(want), rel=1e-6)


def test_set_loss_gradient_stays_inside_the_set():
    # Moving belief between acceptable classes does not change the loss.
    logits = torch.tensor([[1.0, 1.0, 0.0]], requires_grad=True)
    real.set_nll(logits, torch.tensor([[True, True, False]])).backward()
    g = logits.grad[0]
    assert float(g[0]) == pytest.approx(float(g[1])) and float(g[2]) > 0


def test_stratified_split_holds_out_each_cell():
    cells = ["0"] * 100 + ["5|7|9"] * 20 + ["2|4"] * 7 + ["3"] * 1
    tr, dev = real.stratified_split(cells, 0.15, seed=0)
    c = np.asarray(cells)
    assert sorted(set(tr) | set(dev)) == list(range(len(cells))) and not set(tr) & set(dev)
    assert (c[dev] == "0").sum() == 15 and (c[dev] == "5|7|9").sum() == 3 and (c[dev] == "2|4").sum() == 1
    assert (c[dev] == "3").sum() == 0
    np.testing.assert_array_equal(dev, real.stratified_split(cells, 0.15, seed=0)[1])


def test_balanced_sampling_proportions():
    cells = ["0"] * 600 + ["1"] * 300 + ["5|7|9"] * 100
    w = real.balanced_weights(cells)
    assert w.sum() == pytest.approx(1.0)
    c = np.asarray(cells)
    for cell in ("0", "1", "5|7|9"):
        assert w[c == cell].sum() == pytest.approx(1 / 3)
    batches = real.MixedBatches(np.arange(1000) % 10, cells, 8, 64, torch.Generator().manual_seed(0))
    drawn = np.concatenate([batches.draw()[1].numpy() for _ in range(200)])
    share = {cell: float((c[drawn] == cell).mean()) for cell in ("0", "1", "5|7|9")}
    assert all(abs(s - 1 / 3) < 0.02 for s in share.values()), share


def test_mixed_batch_composition_and_bag_boost():
    y = np.arange(10000) % 10
    batches = real.MixedBatches(y, ["0", "1"], n_fmnist=96, n_real=32, gen=torch.Generator().manual_seed(1),
                                bag_boost=3.0)
    fi, ri = batches.draw()
    assert len(fi) == 96 and len(ri) == 32 and int(ri.max()) <= 1
    drawn = np.concatenate([y[batches.draw()[0].numpy()] for _ in range(300)])
    assert float((drawn == 8).mean()) == pytest.approx(3 / 12, abs=0.02)   # 3 parts of 12
    only = real.MixedBatches(y, [], 128, 32, torch.Generator().manual_seed(1))
    fi, ri = only.draw()
    assert len(fi) == 128 and len(ri) == 0


def test_photo_like_keeps_shape_range_and_is_reproducible():
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 6:22, 8:20] = 0.8
    a = photoaug.photo_like(x, torch.Generator().manual_seed(3), p=1.0)
    b = photoaug.photo_like(x, torch.Generator().manual_seed(3), p=1.0)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, x)
    torch.testing.assert_close(photoaug.photo_like(x, torch.Generator().manual_seed(3), p=0.0), x)
    for fn in (photoaug.ragged_edges, photoaug.blotches, photoaug.floor_patch, photoaug.shear_rotate,
               photoaug.gamma, photoaug.grain, photoaug.light):
        y = fn(x, torch.Generator().manual_seed(4))
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1 + 1e-6, fn.__name__


def learnable_images(g, n=200):
    """Images whose class sets the brightness of a block: learnable in a few steps."""
    y = torch.arange(n) % 10
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.1
    x[:, :, 6:22, 6:22] += (y.float() / 10).view(-1, 1, 1, 1)
    return x.clamp(0, 1), y


def test_finetune_runs_and_keeps_the_best_step():
    g = torch.Generator().manual_seed(0)
    x, y = learnable_images(g)
    acc = torch.zeros(40, 10, dtype=torch.bool)
    acc[torch.arange(40), y[:40]] = True
    acc[:20, 2] = True                                    # some set-valued labels
    rt = {"x": x[:40], "accept": acc, "cells": ["|".join(str(int(c)) for c in row.nonzero()[:, 0]) for row in acc]}
    torch.manual_seed(0)
    model, info = finetune.finetune(
        CNN(widths=(4, 8, 8), depth=1), x, y, x[:50], y[:50], rt, rt, steps=6, n_fmnist=24, n_real=8,
        lr=3e-3, weight_decay=0.0, smoothing=0.1, bag_boost=2.0, real_weight=1.0, photo_p=0.5,
        eval_every=3, use_bf16=False, use_cl=False, gen=g)
    assert not model.training
    assert [h["step"] for h in info["history"]] == [0, 3, 6]
    assert info["best_step"] in (0, 3, 6) and "dev_acc" in info["best_eval"]
    assert "photo_bag_recall" in info["start_eval"]

    # Distillation and the weight average; without real photos, the control.
    torch.manual_seed(0)
    model, info = finetune.finetune(
        CNN(widths=(4, 8, 8), depth=1), x, y, x[:50], y[:50], None, None, steps=4, n_fmnist=24, n_real=8,
        lr=3e-3, weight_decay=0.0, smoothing=0.1, bag_boost=1.0, real_weight=1.0, photo_p=0.5,
        eval_every=2, use_bf16=False, use_cl=False, gen=g, distill=0.5, ema_decay=0.9, bag_guard=1.0)
    assert info["real_passes"] == 0.0 and "dev_acc" not in info["best_eval"]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_a_step_exactly_on_the_fashion_mnist_floor_is_kept():
    # The float32 accuracies of a real run: 4,730 and 4,750 of 5,000 right.
    start, on_floor = float(torch.tensor(4750 / 5000)), float(torch.tensor(4730 / 5000))
    assert finetune.within_guard(on_floor, start, 0.004, 5000)
    assert not finetune.within_guard(float(torch.tensor(4729 / 5000)), start, 0.004, 5000)
    assert finetune.within_guard(start, start, 0.0, 5000)


def test_finetune_keeps_no_step_that_costs_fashion_mnist_more_than_the_guard():
    g = torch.Generator().manual_seed(0)
    x, y = learnable_images(g)
    # Real photos whose labels fight Fashion-MNIST's: fitting them costs validation accuracy.
    acc = torch.zeros(40, 10, dtype=torch.bool)
    acc[torch.arange(40), (y[:40] + 5) % 10] = True
    rt = {"x": x[:40], "accept": acc, "cells": [str(int(c)) for c in acc.float().argmax(1)]}
    torch.manual_seed(0)
    model, info = finetune.finetune(
        CNN(widths=(4, 8, 8), depth=1), x, y, x[:50], y[:50], rt, rt, steps=8, n_fmnist=8, n_real=24,
        lr=1e-2, weight_decay=0.0, smoothing=0.0, bag_boost=1.0, real_weight=5.0, photo_p=0.0,
        eval_every=2, use_bf16=False, use_cl=False, gen=g, bag_guard=1.0, fmnist_guard=0.0)
    start = info["start_eval"]["val_acc"]
    assert info["best_eval"]["val_acc"] >= start
    assert any(h["val_acc"] < start for h in info["history"][1:]), "the guard had something to refuse"
