import torch

import train
from fmnist.model import CNN, DenseNet, count_macs, count_params


def tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    # Learnable on purpose: the class sets the brightness of a block.
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.1
    x[:, :, 6:22, 6:22] += (y.float() / 10).view(-1, 1, 1, 1)
    return x.clamp(0, 1), y


def test_training_reduces_loss_and_changes_weights():
    torch.manual_seed(0)
    x, y = tiny_data()
    model = CNN(widths=(8, 16, 16), depth=1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model, info = train.train_model(
        model, "cnn", x, y, x, y, epochs=4, batch=32, opt=opt, sched=None, use_aug=True, smoothing=0.1,
        use_bf16=True, use_cl=True, gen=torch.Generator().manual_seed(0), log=None)
    losses = [h["train_loss"] for h in info["history"]]
    assert losses[-1] < losses[0], losses
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert 1 <= info["best_epoch"] <= 4
    assert not model.training


def test_the_weight_average_is_what_is_kept():
    torch.manual_seed(0)
    x, y = tiny_data()
    model = CNN(widths=(8, 16, 16), depth=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model, info = train.train_model(
        model, "cnn", x, y, x, y, epochs=3, batch=32, opt=opt, sched=None, use_aug=True, smoothing=0.0,
        use_bf16=False, use_cl=False, gen=torch.Generator().manual_seed(0), log=None, ease_epochs=1,
        ema_decay=0.9)
    assert [h["aug_strength"] for h in info["history"]] == [1.0, 1.0, 0.5]
    # The kept weights score what the log says they scored on validation.
    acc = float((train.predict(model, train.normalise(x)).argmax(1) == y).float().mean())
    assert abs(acc - info["best_val_acc"]) < 1e-5


def test_model_shapes_and_counts():
    x = torch.zeros(3, 1, 28, 28)
    assert DenseNet()(x).shape == (3, 10)
    assert CNN()(x).shape == (3, 10)
    # 784*128 + 128*10 multiply-accumulates; the parameter count adds the biases.
    assert count_macs(DenseNet()) == 784 * 128 + 128 * 10
    assert count_params(DenseNet()) == 784 * 128 + 128 + 128 * 10 + 10
