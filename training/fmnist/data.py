"""Fashion-MNIST from the four official gzip IDX files.

Where the files come from, in order: the folder given with --data, the Debian
package `dataset-fashion-mnist`, then a download from the dataset's own
mirror into training/data/fashion-mnist/. Every file is checked against a known SHA-256
before a single byte of it is parsed.
"""

import gzip
import hashlib
import os
import shutil
import urllib.request

import numpy as np

LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
          "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# The official files, as listed in the zalandoresearch/fashion-mnist README.
# Two digests per file: of the .gz as published, and of the IDX inside it.
# The Debian package rewrites the gzip headers (name and timestamp) but not
# the payload, so its .gz digests differ while the IDX digests match.
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz",
                     "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                     "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train_labels": ("train-labels-idx1-ubyte.gz",
                     "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                     "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "test_images": ("t10k-images-idx3-ubyte.gz",
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz",
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
URL_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
DOWNLOAD_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "fashion-mnist")

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


class IdxError(ValueError):
    """A data file that is missing, corrupt or not what it claims to be."""


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def parse_idx(raw, name, magic):
    """Parse an uncompressed IDX buffer of unsigned bytes into a numpy array.

    `name` is only used in error messages, so that they say which file is bad.
    """
    if len(raw) < 4:
        raise IdxError(f"{name}: truncated: {len(raw)} bytes, too short for the 4-byte magic number")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise IdxError(f"{name}: bad magic number 0x{found:08x}, expected 0x{magic:08x} "
                       f"({'images' if magic == IMAGES_MAGIC else 'labels'}); not an IDX file of this kind")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"{name}: truncated: {len(raw)} bytes, the header alone needs {header}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    want = int(np.prod(dims))
    have = len(raw) - header
    if have < want:
        raise IdxError(f"{name}: truncated: header says shape {dims} = {want} bytes of data, "
                       f"but only {have} bytes follow it")
    if have > want:
        raise IdxError(f"{name}: {have - want} unexpected bytes after the {want} bytes of data "
                       f"the header (shape {dims}) announces")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_gz(path, magic, sha256_gz=None, sha256_raw=None):
    """Read one gzip IDX file, checking its digest first when one is given.

    The file passes if either its compressed bytes or its decompressed IDX
    bytes match; a mismatch names the file and both digests.
    """
    with open(path, "rb") as f:
        packed = f.read()
    name = os.path.basename(path)
    try:
        raw = gzip.decompress(packed)
    except (EOFError, OSError, gzip.BadGzipFile) as e:
        raise IdxError(f"{path}: not a complete gzip file ({e}); truncated or corrupt download?") from e
    if sha256_gz or sha256_raw:
        got_gz, got_raw = sha256_hex(packed), sha256_hex(raw)
        if got_gz != sha256_gz and got_raw != sha256_raw:
            raise IdxError(f"{path}: SHA-256 mismatch: file is {got_gz} (contents {got_raw}), "
                           f"expected {sha256_gz} (contents {sha256_raw}); delete it and fetch it again")
    return parse_idx(raw, name, magic)


def _download(dest_dir):
    os.makedirs(dest_dir, exist_ok=True)
    for fname, _, _ in FILES.values():
        dest = os.path.join(dest_dir, fname)
        if os.path.exists(dest):
            continue
        print(f"downloading {URL_BASE + fname}")
        tmp = dest + ".part"
        with urllib.request.urlopen(URL_BASE + fname, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        os.replace(tmp, dest)


def find_data_dir(data_dir=None, download=True):
    """The first folder that holds all four files: --data, Debian's, then a download."""
    def complete(d):
        return d and all(os.path.exists(os.path.join(d, f)) for f, _, _ in FILES.values())
    if data_dir:
        if not complete(data_dir):
            missing = [f for f, _, _ in FILES.values() if not os.path.exists(os.path.join(data_dir, f))]
            raise IdxError(f"--data {data_dir}: missing {', '.join(missing)}")
        return data_dir
    for d in (DEBIAN_DIR, DOWNLOAD_DIR):
        if complete(d):
            return d
    if not download:
        raise IdxError(f"Fashion-MNIST not found in {DEBIAN_DIR} or {DOWNLOAD_DIR}; pass --data DIR")
    _download(DOWNLOAD_DIR)
    return DOWNLOAD_DIR


def load(data_dir):
    """All four arrays, verified: uint8 images [N,28,28] and labels [N]."""
    out = {}
    for key, (fname, sha_gz, sha_raw) in FILES.items():
        magic = IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC
        out[key] = read_idx_gz(os.path.join(data_dir, fname), magic, sha_gz, sha_raw)
    for split in ("train", "test"):
        n_img, n_lab = len(out[f"{split}_images"]), len(out[f"{split}_labels"])
        if n_img != n_lab:
            raise IdxError(f"{split}: {n_img} images but {n_lab} labels")
    return out


def split_train_val(n, n_val, seed=12345):
    """Index arrays (train, val). The split seed is fixed on its own, so that
    changing the training seed never changes which images are held out."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
