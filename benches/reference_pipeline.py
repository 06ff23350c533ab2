"""The reference: tagd's job done by one Python process.

Pillow + numpy + onnxruntime + sqlite3, written the way a careful Python
developer would: Pillow's draft mode makes libjpeg decode at the same DCT
scale tagd picks, inputs are batched 64 at a time, and each batch's rows
are written in one transaction to a WAL-mode SQLite file.

    python reference_pipeline.py --model DIR --database FILE PHOTO_DIR

Per photo, the same conversion as tagd's (src/preprocess), following the
recipe the model's manifest names:

1. open; `draft('RGB', size)` with the size that makes Pillow choose the
   DCT scale tagd picks (the smallest of 1/2, 1/4, 1/8 that keeps the
   long edge at or above 192 px);
2. EXIF orientation (`ImageOps.exif_transpose`);
3. background: `fmnist-v1` the per-channel median of the four corners,
   `fmnist-v2` the per-channel median of a border band 3% of the short
   edge wide;
4. colour distance from the background (numpy), and the contrast tagd
   records (98th percentile of the distance); object box: `fmnist-v1` the
   pixels farther than 5% of 255*sqrt(3); `fmnist-v2` an Otsu threshold of
   the distance (at least that 5%), regions of at least 20% of the largest
   kept (4-connected, `scipy.ndimage.label`), holes filled
   (`binary_fill_holes`), and the pixels outside the mask blanked white;
5. crop, `convert('L')` (BT.601), `resize` of the long edge to 28 with
   `Image.BOX`, `UnsharpMask(radius=1, percent=100, threshold=0)`;
6. pad to 28x28 centred (`fmnist-v1` with the background's gray,
   `fmnist-v2` white), negate, `(p/255 - mean) / std`.

`fmnist-v3` to `fmnist-v5` run as `fmnist-v2`: what they add (a worn
garment cut out of the model wearing it, a studio backdrop touched on
several sides) never applies to the benchmark's photos of garments alone;
`fmnist-v5` then stretches the 28x28 image linearly to span 0 to 255.

Then batches of 64 through one onnxruntime InferenceSession (one intra-op
thread, as tagd's default `model.intra_threads = 1`; `--threads 0` lets
onnxruntime choose), softmax of logits / the manifest's temperature, and
one row per photo (path, label, confidence, probabilities as JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import sys
import time
import tomllib

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageFilter, ImageOps

INPUT_EDGE = 28
DECODE_MIN_LONG_EDGE = 192
MAX_RGB_DISTANCE = 255.0 * math.sqrt(3.0)
TRIM_FUZZ = 0.05 * MAX_RGB_DISTANCE
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
UNSHARP = ImageFilter.UnsharpMask(radius=1, percent=100, threshold=0)


def dct_denominator(long_edge: int) -> int:
    """tagd's choice (decode.rs `scaling_for`): the largest reduction whose
    scaled long edge, rounded up as libjpeg does, is still >= 192 px."""
    for denominator in (8, 4, 2):
        if -(-long_edge // denominator) >= DECODE_MIN_LONG_EDGE:
            return denominator
    return 1


def open_upright(path: str) -> Image.Image:
    image = Image.open(path)
    if image.format == "JPEG":
        width, height = image.size
        denominator = dct_denominator(max(width, height))
        if denominator > 1:
            # Pillow picks the largest scale s in {8, 4, 2, 1} with
            # s <= min(width // w, height // h): asking for size // s gives s.
            image.draft("RGB", (width // denominator, height // denominator))
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def corner_colour(rgb: np.ndarray) -> np.ndarray:
    corners = np.stack([rgb[0, 0], rgb[0, -1], rgb[-1, 0], rgb[-1, -1]]).astype(np.uint16)
    corners.sort(axis=0)
    return (corners[1] + corners[2]) // 2


def border_colour(rgb: np.ndarray) -> np.ndarray:
    """Per-channel lower median of a band around the edge (segment.rs)."""
    height, width = rgb.shape[:2]
    band = max(int(min(width, height) * 0.03), 1)
    pixels = np.concatenate(
        [
            rgb[:band].reshape(-1, 3),
            rgb[height - band :].reshape(-1, 3),
            rgb[band : height - band, :band].reshape(-1, 3),
            rgb[band : height - band, width - band :].reshape(-1, 3),
        ]
    )
    half = -(-len(pixels) // 2)
    return np.array(
        [
            np.searchsorted(np.cumsum(np.bincount(pixels[:, c], minlength=256)), half)
            for c in range(3)
        ]
    )


def otsu_threshold(histogram: np.ndarray) -> int:
    counts = histogram.astype(np.float64)
    values = np.arange(len(counts), dtype=np.float64)
    weight_low = np.cumsum(counts)
    sum_low = np.cumsum(values * counts)
    weight_high = weight_low[-1] - weight_low
    valid = (weight_low > 0) & (weight_high > 0)
    if not valid.any():
        return 0
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = sum_low / weight_low - (sum_low[-1] - sum_low) / weight_high
        variance = weight_low * weight_high * spread**2
    variance[~valid] = -1.0
    return int(np.argmax(variance))


def object_mask(distance: np.ndarray, threshold: int) -> np.ndarray:
    from scipy import ndimage  # only fmnist-v2 needs it

    regions, count = ndimage.label(distance > threshold)  # 4-connected
    if count == 0:
        return np.zeros(distance.shape, dtype=bool)
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    floor = max(int(sizes.max() * 0.2), 1)
    return ndimage.binary_fill_holes((sizes >= floor)[regions])


def convert(image: Image.Image, v2: bool, stretch: bool = False) -> tuple[np.ndarray, float, bool]:
    """The fmnist-v1 or -v2 conversion, stretched for -v5: 28x28 uint8,
    bright object on black."""
    rgb = np.asarray(image)
    background = (border_colour(rgb) if v2 else corner_colour(rgb)).astype(np.int16)

    diff = rgb.astype(np.int16) - background
    squared = np.einsum("ijk,ijk->ij", diff, diff, dtype=np.int32)
    distance = np.sqrt(squared, dtype=np.float32).astype(np.uint16)
    histogram = np.bincount(distance.ravel(), minlength=443)
    wanted = math.ceil(distance.size * 0.98)
    contrast = float(np.searchsorted(np.cumsum(histogram), wanted)) / MAX_RGB_DISTANCE

    if v2:
        mask = object_mask(distance, max(otsu_threshold(histogram), int(TRIM_FUZZ)))
    else:
        mask = distance > TRIM_FUZZ
    rows = np.flatnonzero(mask.any(axis=1))
    found = rows.size > 0
    box = (0, 0, rgb.shape[1], rgb.shape[0])
    if found:
        cols = np.flatnonzero(mask.any(axis=0))
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        image = image.crop(box)
    gray = image.convert("L")
    if v2 and found:
        # Outside the mask: white, so black once negated.
        pixels = np.array(gray)
        pixels[~mask[box[1] : box[3], box[0] : box[2]]] = 255
        gray = Image.fromarray(pixels, "L")
        fill = 255
    else:
        r, g, b = (int(v) for v in background)
        fill = (299 * r + 587 * g + 114 * b + 500) // 1000

    width, height = gray.size
    scale = INPUT_EDGE / max(width, height)
    new_size = (
        min(max(math.floor(width * scale + 0.5), 1), INPUT_EDGE),
        min(max(math.floor(height * scale + 0.5), 1), INPUT_EDGE),
    )
    if new_size != gray.size:
        gray = gray.resize(new_size, Image.Resampling.BOX)
    sharp = gray.filter(UNSHARP)

    canvas = Image.new("L", (INPUT_EDGE, INPUT_EDGE), fill)
    canvas.paste(sharp, ((INPUT_EDGE - new_size[0]) // 2, (INPUT_EDGE - new_size[1]) // 2))
    pixels = 255 - np.asarray(canvas)
    if stretch:
        pixels = stretched(pixels)
    return pixels, contrast, found


def stretched(pixels: np.ndarray) -> np.ndarray:
    """Linearly to span 0 to 255; an image of one value stays as it is."""
    low, high = int(pixels.min()), int(pixels.max())
    if high == low:
        return pixels
    return np.round((pixels - low) * (255.0 / (high - low))).astype(np.uint8)


def list_photos(folders: list[str]) -> list[str]:
    paths = []
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            paths.extend(
                os.path.realpath(os.path.join(root, name))
                for name in sorted(files)
                if name.lower().endswith(EXTENSIONS) and not name.startswith(".")
            )
    return paths


def open_database(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")  # tagd's setting in WAL mode
    db.execute(
        """CREATE TABLE IF NOT EXISTS predictions (
            path TEXT PRIMARY KEY,
            label TEXT,
            confidence REAL,
            probabilities TEXT,
            error TEXT,
            tagged_at TEXT NOT NULL
        )"""
    )
    return db


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--model", required=True, help="model folder with model.toml")
    parser.add_argument("--database", required=True, help="SQLite file")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op threads; 0: its default"
    )
    parser.add_argument(
        "--explain", metavar="DIR", help="also write each 28x28 model input as a PNG into DIR"
    )
    args = parser.parse_args()
    started = time.perf_counter()

    with open(os.path.join(args.model, "model.toml"), "rb") as manifest_file:
        manifest = tomllib.load(manifest_file)
    mean, std = manifest["input"]["mean"], manifest["input"]["std"]
    temperature = manifest["calibration"]["temperature"]
    labels = manifest["labels"]
    recipe = manifest["preprocessing"]
    if recipe not in ("fmnist-v1", "fmnist-v2", "fmnist-v3", "fmnist-v4", "fmnist-v5"):
        raise SystemExit(f"reference: unknown preprocessing {recipe!r}")
    # fmnist-v3 to v5 add to v2 only what happens to a model photographed wearing
    # a garment on a studio backdrop; the benchmark's photos show garments
    # alone, so v2's steps are the same work for them.
    v2 = recipe != "fmnist-v1"
    stretch = recipe == "fmnist-v5"
    input_name, output_name = manifest["input"]["name"], manifest["output"]["name"]

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        os.path.join(args.model, manifest["onnx_file"]),
        options,
        providers=["CPUExecutionProvider"],
    )
    db = open_database(args.database)

    tagged = failed = 0

    def flush(paths: list[str], inputs: list[np.ndarray], failures: list[tuple[str, str]]):
        nonlocal tagged, failed
        rows = []
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        if inputs:
            batch = np.stack(inputs).astype(np.float32)[:, None, :, :]
            batch = (batch / 255.0 - mean) / std
            logits = session.run([output_name], {input_name: batch.astype(np.float32)})[0]
            scaled = logits / temperature
            scaled -= scaled.max(axis=1, keepdims=True)
            probabilities = np.exp(scaled)
            probabilities /= probabilities.sum(axis=1, keepdims=True)
            for path, probs in zip(paths, probabilities, strict=True):
                top = int(probs.argmax())
                rows.append(
                    (path, labels[top], float(probs[top]), json.dumps(probs.tolist()), None, now)
                )
            tagged += len(paths)
        for path, error in failures:
            rows.append((path, None, None, None, error, now))
        failed += len(failures)
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")

    paths: list[str] = []
    inputs: list[np.ndarray] = []
    failures: list[tuple[str, str]] = []
    photos = list_photos(args.folders)
    for path in photos:
        try:
            pixels, _contrast, _found = convert(open_upright(path), v2, stretch)
        except Exception as error:  # a bad file fails its row, not the run
            failures.append((path, f"{type(error).__name__}: {error}"))
            continue
        if args.explain:
            os.makedirs(args.explain, exist_ok=True)
            name = os.path.splitext(os.path.basename(path))[0] + ".png"
            Image.fromarray(np.ascontiguousarray(pixels), "L").save(
                os.path.join(args.explain, name)
            )
        paths.append(path)
        inputs.append(pixels)
        if len(inputs) == args.batch:
            flush(paths, inputs, failures)
            paths, inputs, failures = [], [], []
    if inputs or failures:
        flush(paths, inputs, failures)
    db.close()

    elapsed = time.perf_counter() - started
    done = tagged + failed
    print(
        f"reference: {len(photos)} files in {elapsed:.1f} s: {tagged} tagged, {failed} failed "
        f"({done / max(elapsed, 1e-9):.1f} images/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
