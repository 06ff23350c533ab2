"""Make clean Fashion-MNIST images look like real photos after the daemon's
fmnist-v2 and -v3 conversions, and the light augmentation used on real photos.

What the conversion does to a phone photo, and what is imitated here, on
[B, 1, 28, 28] tensors in [0, 1] (garment bright on black):

- the Otsu mask is imperfect: its edge is ragged, it bites into the garment
  where a fold or a print matches the floor, and it keeps a patch of floor or
  a shadow beside the garment (`ragged_edges`, `blotches`, `floor_patch`);
- a garment photographed from above at an angle is sheared, and is rarely
  square to the frame (`shear_rotate`);
- the tones are those of a phone camera under room light, not of a studio:
  flatter or harsher (`gamma`), with sensor noise and fabric texture that the
  3x3 unsharp mask amplifies (`grain`).

FIXME: nothing here imitates the object's own tone. Negated, a black leather
shoe is one solid bright shape without a Fashion-MNIST sneaker's shading, and
the net reads it as an ankle boot (14 of the 66 sneakers in the model card's
shop set); a white one on white is faint and reads as a sandal. The obvious
step does not fix it. Measured with a full run: half of the photo-like images
scaled by k (x * k, clipped; k in 1.6-4 for a dark object, 0.35-0.7 for a pale
one) left 9 of the 11 shop sneakers (labelled Sneaker alone) that had been
called Ankle boot, and all 8 called Sandal; it took the shop set from 76.5 to
76.8% but the phone set from 72.4 to 69.7%, footwear called Bag there from 8.5
to 12.7%, and Fashion-MNIST test to 93.99% (the fine-tuning's Fashion-MNIST
guard stopped it at step 1000 of 2500). The contact sheet suggests viewpoint
rather than tone: shop shoes are shot at three quarters, so after the trim
they stand taller in the 28x28 frame than any Fashion-MNIST sneaker, all of
which are side views. A step for that was measured too: half of the photo-like
images stretched along the object's short side by 1-1.5x (never past its long
side). With it the shop sneakers called Ankle boot fell from 11 to 8 and the
shop set rose to 77.5%, with Fashion-MNIST test at 94.22%, but the fine-tuning
kept step 500 of 2500: from step 750 on, Fashion-MNIST validation was at or
under the guard's floor (0.9460 against 0.9500 - 0.004, which float32 puts
just below), so the real photos had barely been learnt (phone photos 59.3%,
footwear called Bag 14.1%). Rerun with the guard that now keeps a step on its
floor (`finetune.within_guard`), it kept step 1750: Fashion-MNIST test 94.11%,
shop set 76.8%, phone photos 72.7% with footwear called Bag 7.0% and 32.0%
flagged, but 83.7% right among the unflagged (the shipped model: 87.6%), and
the 11 shop sneakers called Ankle boot were 11 again. Neither step is the fix;
the later fine-tuning steps that learn the real photos best (dev photos 75.9%
at step 2500) cost more Fashion-MNIST validation than the guard allows.

Every function takes a torch.Generator and works on the whole batch at once;
each touches only a random share of the images.
"""

import math

import torch
import torch.nn.functional as F

from fmnist.augment import brightness, random_affine


def _chosen(b, p, gen):
    return (torch.rand(b, generator=gen) < p).view(b, 1, 1, 1)


def _smooth_noise(b, gen, cells=7, size=28):
    """Low-frequency noise in [0, 1]: uniform noise on a coarse grid, upsampled."""
    coarse = torch.rand(b, 1, cells, cells, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp_(0, 1)


def _erode(m):
    return -F.max_pool2d(-m, 3, stride=1, padding=1)


def _dilate(m):
    return F.max_pool2d(m, 3, stride=1, padding=1)


def ragged_edges(x, gen, p=0.5, amount=(0.2, 0.6), thresh=0.05):
    """Take a band one pixel wide off some of the garment's edge, and grow it
    elsewhere by one pixel with the neighbouring intensity."""
    b = x.shape[0]
    mask = (x > thresh).float()
    inner = mask - _erode(mask)          # the garment's outermost pixels
    outer = _dilate(mask) - mask         # the background pixels touching it
    a = torch.empty(b, 1, 1, 1).uniform_(*amount, generator=gen)
    noise = _smooth_noise(b, gen, cells=9)
    cut = inner * (noise < a).float()
    grow = outer * (noise > 1 - a).float()
    grown = F.max_pool2d(x, 3, stride=1, padding=1) * 0.8
    y = x * (1 - cut) + grown * grow
    return torch.where(_chosen(b, p, gen), y, x)


def blotches(x, gen, p=0.3, cover=(0.03, 0.15)):
    """Black blobs inside the garment: where the mask missed a part of it,
    or a part as dark as the (blanked) floor."""
    b = x.shape[0]
    noise = _smooth_noise(b, gen, cells=6)
    q = torch.empty(b, 1, 1, 1).uniform_(*cover, generator=gen)
    hole = (noise < q).float()
    y = x * (1 - hole)
    return torch.where(_chosen(b, p, gen), y, x)


def floor_patch(x, gen, p=0.15, level=(0.15, 0.6)):
    """A piece of floor or shadow left by the mask: a grey region reaching in
    from one side of the frame, behind the garment."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    ang = torch.rand(b, generator=gen).view(b, 1, 1, 1) * (2 * math.pi)
    off = torch.empty(b, 1, 1, 1).uniform_(0.5, 1.1, generator=gen)
    region = ((xs * torch.cos(ang) + ys * torch.sin(ang)) > off).float()
    lv = torch.empty(b, 1, 1, 1).uniform_(*level, generator=gen)
    tex = 0.8 + 0.4 * _smooth_noise(b, gen, cells=5)
    y = torch.maximum(x, region * lv * tex)
    return torch.where(_chosen(b, p, gen), y, x).clamp_(0, 1)


def shear_rotate(x, gen, p=0.4, max_shear=0.25, max_deg=15.0):
    """Shear and rotate around the centre (a garment seen at an angle)."""
    b = x.shape[0]
    sh = torch.empty(b).uniform_(-max_shear, max_shear, generator=gen)
    ang = torch.empty(b).uniform_(-max_deg, max_deg, generator=gen) * (math.pi / 180)
    c, s = torch.cos(ang), torch.sin(ang)
    # rotation @ shear-in-x, as the output->input map affine_grid wants
    theta = torch.stack([torch.stack([c, c * sh - s, torch.zeros(b)], 1),
                         torch.stack([s, s * sh + c, torch.zeros(b)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.where(_chosen(b, p, gen), y, x)


def gamma(x, gen, p=0.5, lo=0.5, hi=2.0):
    """x ** g on the garment; black stays black."""
    b = x.shape[0]
    g = torch.exp(torch.empty(b, 1, 1, 1).uniform_(math.log(lo), math.log(hi), generator=gen))
    y = x.clamp(0, 1) ** g
    return torch.where(_chosen(b, p, gen), y, x)


def grain(x, gen, p=0.4, sigma=(0.02, 0.08), thresh=0.05):
    """Pixel noise on the garment only (the conversion blanks the floor)."""
    b = x.shape[0]
    s = torch.empty(b, 1, 1, 1).uniform_(*sigma, generator=gen)
    n = torch.randn(x.shape, generator=gen) * s
    y = (x + n * (x > thresh).float()).clamp(0, 1)
    return torch.where(_chosen(b, p, gen), y, x)


def photo_like(x, gen, p=0.5):
    """The whole chain, applied to a share `p` of the batch (the rest is
    returned untouched). Input and output: [B, 1, 28, 28] in [0, 1]."""
    b = x.shape[0]
    y = shear_rotate(x, gen)
    y = floor_patch(y, gen)
    y = ragged_edges(y, gen)
    y = blotches(y, gen)
    y = gamma(y, gen)
    y = grain(y, gen)
    return torch.where(_chosen(b, p, gen), y, x)


def light(x, gen):
    """For real photos, which already carry the real defects: mirror, shift by
    up to 2 px, scale 0.9-1.1, rotate up to 5 degrees, intensity 0.8-1.2."""
    x = random_affine(x, gen, max_shift=2.0, scale=(0.9, 1.1), max_deg=5.0, p_flip=0.5)
    return brightness(x, gen, p=0.5, factor=(0.8, 1.2))
