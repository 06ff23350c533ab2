"""The two networks: the dense baseline and the CNN that ships.

Both take the normalised image, x = (pixel/255 - MEAN) / STD, shaped
[N, 1, 28, 28], and return logits [N, 10]. The normalisation stays out of the
graph on purpose: the daemon applies it, with the numbers in model.toml.
"""

import torch
import torch.nn as nn

MEAN = 0.2860
STD = 0.3530


def normalise(pixels01):
    return (pixels01 - MEAN) / STD


class DenseNet(nn.Module):
    """The classic Keras tutorial model, kept as the baseline to beat."""

    def __init__(self, hidden=128, dropout=0.2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )

    def forward(self, x):
        return self.net(x)


def conv_bn(cin, cout):
    # No conv bias: BatchNorm's shift does that job, and the exporter folds
    # BN into the conv anyway.
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class CNN(nn.Module):
    """A small VGG-style net: one conv at 28x28 (the costly resolution), then
    `depth` convs at 14x14 and at 7x7, a pool to 3x3 and a two-layer head.

    widths=(32, 64, 128), depth=1 is the 3-conv net of the first spike.
    """

    def __init__(self, widths=(32, 64, 128), depth=2, hidden=128, dropout=0.3):
        super().__init__()
        w1, w2, w3 = widths
        layers = conv_bn(1, w1) + [nn.MaxPool2d(2)]                 # 28 -> 14
        layers += conv_bn(w1, w2)
        for _ in range(depth - 1):
            layers += conv_bn(w2, w2)
        layers += [nn.MaxPool2d(2)]                                  # 14 -> 7
        layers += conv_bn(w2, w3)
        for _ in range(depth - 1):
            layers += conv_bn(w3, w3)
        layers += [nn.MaxPool2d(2)]                                  # 7 -> 3
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(w3 * 9, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )

    def forward(self, x):
        return self.head(self.features(x))


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def count_macs(model):
    """Multiply-accumulates for one image, counted on conv and linear layers
    (BN, ReLU and pooling are a rounding error next to them)."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += out[0].numel() * k
        elif isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total
