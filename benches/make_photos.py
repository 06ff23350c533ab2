"""Deterministic product-photo-like JPEGs for the throughput benchmark.

Each photo is a garment-like shape (T-shirt, trousers, dress, bag or shoe)
in a dark or saturated colour with a woven texture, a soft shadow, a light
studio background with a gentle gradient, and sensor noise over everything,
so the files have the entropy (and so the decode cost) of real photos.
Saved as baseline JPEG, quality 88, 4:2:0, with a small EXIF block; one
photo in eight is stored rotated with EXIF orientation 6, as a camera held
upright stores it.

    python make_photos.py OUT_DIR --count 300 --width 1600 --height 1200

The same arguments always give byte-identical files (seeded per photo). A
stamp file in OUT_DIR records the arguments; a second run with the same
arguments does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

GENERATOR_VERSION = 1
STAMP = ".photos.json"

# Garment outlines in a unit box (x right, y down), drawn as polygons.
SHAPES = {
    "tshirt": [
        (0.30, 0.00),
        (0.42, 0.05),
        (0.58, 0.05),
        (0.70, 0.00),
        (1.00, 0.18),
        (0.90, 0.38),
        (0.75, 0.30),
        (0.75, 1.00),
        (0.25, 1.00),
        (0.25, 0.30),
        (0.10, 0.38),
        (0.00, 0.18),
    ],
    "trouser": [
        (0.22, 0.00),
        (0.78, 0.00),
        (0.82, 1.00),
        (0.56, 1.00),
        (0.50, 0.30),
        (0.44, 1.00),
        (0.18, 1.00),
    ],
    "dress": [
        (0.38, 0.00),
        (0.62, 0.00),
        (0.66, 0.30),
        (0.60, 0.42),
        (0.95, 1.00),
        (0.05, 1.00),
        (0.40, 0.42),
        (0.34, 0.30),
    ],
    "bag": [
        (0.05, 0.30),
        (0.30, 0.30),
        (0.32, 0.05),
        (0.68, 0.05),
        (0.70, 0.30),
        (0.95, 0.30),
        (1.00, 1.00),
        (0.00, 1.00),
        (0.05, 0.30),
        (0.38, 0.30),
        (0.40, 0.12),
        (0.60, 0.12),
        (0.62, 0.30),
    ],
    "shoe": [
        (0.00, 0.55),
        (0.05, 0.35),
        (0.30, 0.30),
        (0.45, 0.00),
        (0.70, 0.05),
        (0.75, 0.40),
        (1.00, 0.62),
        (1.00, 0.88),
        (0.95, 1.00),
        (0.03, 1.00),
    ],
}
# Width / height of each shape's box.
ASPECT = {"tshirt": 1.0, "trouser": 0.55, "dress": 0.65, "bag": 1.1, "shoe": 2.2}


def make_photo(seed: int, index: int, width: int, height: int, noise: float) -> Image.Image:
    rng = np.random.default_rng([GENERATOR_VERSION, seed, index, width, height])
    unit = min(width, height) / 1200.0  # detail scale relative to a 1600x1200 photo

    # Background: light studio sweep, slightly tinted, gentle gradient.
    base = rng.uniform(228, 246) + rng.uniform(-3, 3, size=3)
    gradient = rng.uniform(2, 6) * np.linspace(-1, 1, height, dtype=np.float32)[:, None]

    # The garment's outline, placed off-centre at a random size.
    kind = list(SHAPES)[rng.integers(len(SHAPES))]
    box_h = rng.uniform(0.45, 0.78) * height
    box_w = min(box_h * ASPECT[kind], 0.8 * width)
    box_h = box_w / ASPECT[kind]
    cx = width / 2 + rng.uniform(-1, 1) * (0.9 * width - box_w) / 2
    cy = height / 2 + rng.uniform(-1, 1) * (0.9 * height - box_h) / 2
    x0, y0 = cx - box_w / 2, cy - box_h / 2
    outline = [(x0 + px * box_w, y0 + py * box_h) for px, py in SHAPES[kind]]
    mask_image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask_image).polygon(outline, fill=255)
    soft_mask = mask_image.filter(ImageFilter.GaussianBlur(1.2 * unit))

    # A soft shadow below and to the right of the object.
    shadow_image = Image.new("L", (width, height), 0)
    shift = (int(0.012 * width), int(0.02 * height))
    shadow_image.paste(mask_image, shift)
    shadow_image = shadow_image.filter(ImageFilter.GaussianBlur(0.025 * width))

    mask = np.asarray(soft_mask, dtype=np.float32) / 255.0
    shadow = np.asarray(shadow_image, dtype=np.float32) * (rng.uniform(6, 11) / 255.0)
    backdrop = gradient - shadow  # (H, W), added to the base colour

    # The garment: a dark or saturated colour, woven texture, side lighting.
    if rng.random() < 0.5:
        colour = rng.uniform(20, 90, size=3)
    else:
        colour = rng.uniform(30, 200, size=3)
        colour[rng.integers(3)] = rng.uniform(15, 60)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    period = rng.uniform(3.0, 7.0) * unit**0.5  # finer weave detail at higher resolution
    weave = (
        rng.uniform(5, 10)
        * np.sin(xs * (2 * np.pi / period))
        * np.sin(ys * (2 * np.pi / (period * rng.uniform(0.8, 1.25))))
    )
    weave += rng.uniform(2, 5) * np.sin((xs + ys) * (2 * np.pi / (period * 2.7)))
    light = 1.0 + rng.uniform(-0.15, 0.15) * (xs / width - 0.5) + 0.1 * (0.5 - ys / height)

    pixels = np.empty((height, width, 3), dtype=np.float32)
    for channel in range(3):
        garment = colour[channel] * light + weave
        back = base[channel] + backdrop
        pixels[:, :, channel] = back + (garment - back) * mask
    pixels += rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(
        noise * rng.uniform(0.8, 1.2)
    )
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def write_photo(job: tuple[str, int, int, int, int, float]) -> int:
    out_dir, seed, index, width, height, noise = job
    upright = make_photo(seed, index, width, height, noise)
    exif = Image.Exif()
    exif[0x010F] = "Benchmark"  # Make
    exif[0x0110] = "Product camera"  # Model
    exif[0x0132] = "2026:12:03 10:00:00"  # DateTime
    if index % 8 == 7:
        # Stored turned 90 degrees anticlockwise; orientation 6 turns it back.
        stored = upright.transpose(Image.Transpose.ROTATE_90)
        exif[0x0112] = 6
    else:
        stored = upright
        exif[0x0112] = 1
    path = os.path.join(out_dir, f"p{index:04d}.jpg")
    stored.save(
        path + ".tmp",
        "JPEG",
        quality=88,
        subsampling=2,  # 4:2:0
        progressive=False,
        optimize=False,
        exif=exif,
    )
    os.replace(path + ".tmp", path)
    return os.path.getsize(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--noise",
        type=float,
        default=None,
        help="sensor noise, standard deviation in gray levels; it stands in for the fine "
        "detail of real photos [default: 2.8 up to 4 MP, 10 above: about 190 KB at "
        "1600x1200 and 3 MB at 12 MP, the sizes of web product photos and camera JPEGs]",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.noise is None:
        args.noise = 2.8 if args.width * args.height <= 4_000_000 else 10.0

    wanted = {
        "version": GENERATOR_VERSION,
        "count": args.count,
        "width": args.width,
        "height": args.height,
        "seed": args.seed,
        "noise": args.noise,
    }
    stamp_path = os.path.join(args.out_dir, STAMP)
    os.makedirs(args.out_dir, exist_ok=True)
    try:
        with open(stamp_path) as stamp:
            done = json.load(stamp)
        if {k: done.get(k) for k in wanted} == wanted:
            print(
                f"{args.out_dir}: {args.count} photos at {args.width}x{args.height} "
                f"already there ({done['mean_kb']:.0f} KB each on average)"
            )
            return 0
    except (OSError, ValueError, KeyError):
        pass

    for name in os.listdir(args.out_dir):
        if name.endswith((".jpg", ".tmp")) or name == STAMP:
            os.remove(os.path.join(args.out_dir, name))
    jobs = [
        (args.out_dir, args.seed, i, args.width, args.height, args.noise) for i in range(args.count)
    ]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        sizes = list(pool.map(write_photo, jobs, chunksize=4))

    mean_kb = sum(sizes) / len(sizes) / 1024 if sizes else 0.0
    with open(stamp_path, "w") as stamp:
        json.dump({**wanted, "mean_kb": mean_kb, "total_bytes": sum(sizes)}, stamp)
    print(
        f"{args.out_dir}: made {args.count} photos at {args.width}x{args.height}, "
        f"{mean_kb:.0f} KB each on average"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
