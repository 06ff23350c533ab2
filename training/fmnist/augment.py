"""Batch augmentation on [B, 1, 28, 28] float tensors with pixels in [0, 1].

The aim is the daemon's input, not the benchmark: a photo cropped, resized to
28x28 and inverted is rarely centred to the pixel, rarely fills the frame the
way Fashion-MNIST items do, is often darker or flatter, and may be soft or
over-sharpened. Everything is done on the whole batch at once; at 28x28 one
affine_grid/grid_sample call costs less than a forward pass.
"""

import math

import torch
import torch.nn.functional as F


def random_affine(x, gen, max_shift=3.0, scale=(0.75, 1.15), max_deg=8.0, p_flip=0.5):
    """Shift, scale, rotate and mirror each image by its own random amount."""
    b, _, h, w = x.shape
    s = torch.empty(b).uniform_(*scale, generator=gen)
    ang = torch.empty(b).uniform_(-max_deg, max_deg, generator=gen) * (math.pi / 180)
    flip = torch.where(torch.rand(b, generator=gen) < p_flip, -1.0, 1.0)
    # In pixels, then in the [-1, 1] coordinates that affine_grid uses.
    tx = torch.empty(b).uniform_(-max_shift, max_shift, generator=gen) * (2.0 / w)
    ty = torch.empty(b).uniform_(-max_shift, max_shift, generator=gen) * (2.0 / h)
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    # theta maps output coordinates to input ones, so scale s > 1 samples a
    # smaller window: the garment grows. The flip multiplies the x column.
    theta = torch.stack([
        torch.stack([cos * flip, -sin, tx], dim=1),
        torch.stack([sin * flip, cos, ty], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


_BLUR = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]).div(16).view(1, 1, 3, 3)


def blur_sharpen(x, gen, p=0.3, amount=(-1.0, 1.5)):
    """x + k * (x - blur(x)): k < 0 softens (k = -1 is a full 3x3 Gaussian), k > 0 sharpens."""
    b = x.shape[0]
    k = torch.empty(b, 1, 1, 1).uniform_(*amount, generator=gen)
    k = torch.where(torch.rand(b, 1, 1, 1, generator=gen) < p, k, torch.zeros_like(k))
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), _BLUR)
    return (x + k * (x - blurred)).clamp_(0.0, 1.0)


def brightness(x, gen, p=0.5, factor=(0.4, 1.2)):
    """Multiply intensities: the background stays 0, the garment gets dimmer or brighter.
    This is what a grey or dark-on-dark photo looks like after inversion."""
    b = x.shape[0]
    f = torch.empty(b, 1, 1, 1).uniform_(*factor, generator=gen)
    f = torch.where(torch.rand(b, 1, 1, 1, generator=gen) < p, f, torch.ones_like(f))
    return (x * f).clamp_(0.0, 1.0)


def random_erase(x, gen, p=0.2, area=(0.02, 0.15), ratio=(0.3, 3.3)):
    """Blank one rectangle per chosen image: a hand, a tag, a cropped edge."""
    b, _, h, w = x.shape
    a = torch.empty(b).uniform_(*area, generator=gen) * h * w
    r = torch.exp(torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen))
    eh = (a * r).sqrt().clamp(1, h)
    ew = (a / r).sqrt().clamp(1, w)
    y0 = torch.rand(b, generator=gen) * (h - eh)
    x0 = torch.rand(b, generator=gen) * (w - ew)
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    box = ((ys >= y0.view(b, 1, 1)) & (ys < (y0 + eh).view(b, 1, 1))
           & (xs >= x0.view(b, 1, 1)) & (xs < (x0 + ew).view(b, 1, 1)))
    on = (torch.rand(b, generator=gen) < p).view(b, 1, 1)
    return x.masked_fill((box & on).unsqueeze(1), 0.0)


def augment(x, gen, strength=1.0):
    """The full training-time chain. Input and output: [B, 1, 28, 28] in [0, 1].

    `strength` scales the share of images each step touches: the last epochs
    run at half strength, so the net settles on images nearer the clean,
    centred ones the test set holds, after it has learnt to tolerate the rest.
    """
    b = x.shape[0]
    moved = random_affine(x, gen)
    # Some images pass through untouched, so the clean, centred case stays
    # well represented; the test set is all clean and centred.
    keep = (torch.rand(b, 1, 1, 1, generator=gen) < 0.7 * strength)
    x = torch.where(keep, moved, x)
    x = brightness(x, gen, p=0.5 * strength)
    x = blur_sharpen(x, gen, p=0.3 * strength)
    x = random_erase(x, gen, p=0.2 * strength)
    return x


# Deterministic transforms for the robustness probes -----------------------

def shift(x, dx, dy):
    """Move every image by whole pixels, filling with background."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    ys_src = slice(max(0, -dy), h - max(0, dy))
    ys_dst = slice(max(0, dy), h - max(0, -dy))
    xs_src = slice(max(0, -dx), w - max(0, dx))
    xs_dst = slice(max(0, dx), w - max(0, -dx))
    out[..., ys_dst, xs_dst] = x[..., ys_src, xs_src]
    return out


def shrink(x, factor=0.8):
    """Resize every image to factor*28 pixels and centre it on a black 28x28 canvas."""
    h, w = x.shape[-2:]
    nh, nw = round(h * factor), round(w * factor)
    small = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    out = torch.zeros_like(x)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[..., top:top + nh, left:left + nw] = small
    return out.clamp_(0.0, 1.0)


PROBES = {
    "clean": lambda x: x,
    "shift +3,+3": lambda x: shift(x, 3, 3),
    "shift -3,-3": lambda x: shift(x, -3, -3),
    "hflip": lambda x: x.flip(-1),
    "shrink 20%": lambda x: shrink(x, 0.8),
    "contrast x0.5": lambda x: x * 0.5,
}
