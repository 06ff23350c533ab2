import gzip
import hashlib

import numpy as np
import pytest

from fmnist import data
from fmnist.data import IMAGES_MAGIC, LABELS_MAGIC, IdxError


def idx_bytes(arr, magic):
    arr = np.asarray(arr, dtype=np.uint8)
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.tobytes()


def write_gz(path, raw):
    path.write_bytes(gzip.compress(raw))
    return path


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)


def test_good_file_round_trips(tmp_path, images):
    raw = idx_bytes(images, IMAGES_MAGIC)
    p = write_gz(tmp_path / "imgs.gz", raw)
    got = data.read_idx_gz(p, IMAGES_MAGIC, sha256_raw=hashlib.sha256(raw).hexdigest())
    assert got.shape == (5, 28, 28) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)


def test_labels_file(tmp_path):
    p = write_gz(tmp_path / "labels.gz", idx_bytes([3, 1, 4, 1, 5], LABELS_MAGIC))
    np.testing.assert_array_equal(data.read_idx_gz(p, LABELS_MAGIC), [3, 1, 4, 1, 5])


def test_compressed_digest_is_accepted_too(tmp_path, images):
    p = write_gz(tmp_path / "imgs.gz", idx_bytes(images, IMAGES_MAGIC))
    data.read_idx_gz(p, IMAGES_MAGIC, sha256_gz=hashlib.sha256(p.read_bytes()).hexdigest(),
                     sha256_raw="0" * 64)


def test_bad_magic_names_file_and_number(tmp_path, images):
    # A labels file where images are expected is the realistic mix-up.
    p = write_gz(tmp_path / "swapped.gz", idx_bytes(images.reshape(-1), LABELS_MAGIC))
    with pytest.raises(IdxError, match=r"swapped\.gz: bad magic number 0x00000801, expected 0x00000803"):
        data.read_idx_gz(p, IMAGES_MAGIC)


def test_truncated_payload_says_how_much_is_missing(tmp_path, images):
    raw = idx_bytes(images, IMAGES_MAGIC)[:-100]
    p = write_gz(tmp_path / "short.gz", raw)
    with pytest.raises(IdxError, match=r"short\.gz: truncated: header says shape \(5, 28, 28\) = 3920 bytes.*3820"):
        data.read_idx_gz(p, IMAGES_MAGIC)


def test_truncated_header(tmp_path):
    p = write_gz(tmp_path / "tiny.gz", IMAGES_MAGIC.to_bytes(4, "big") + b"\x00\x00")
    with pytest.raises(IdxError, match=r"tiny\.gz: truncated: 6 bytes, the header alone needs 16"):
        data.read_idx_gz(p, IMAGES_MAGIC)


def test_truncated_gzip_stream(tmp_path, images):
    p = tmp_path / "cut.gz"
    p.write_bytes(gzip.compress(idx_bytes(images, IMAGES_MAGIC))[:200])
    with pytest.raises(IdxError, match=r"cut\.gz: not a complete gzip file"):
        data.read_idx_gz(p, IMAGES_MAGIC)


def test_trailing_bytes_are_an_error(tmp_path, images):
    p = write_gz(tmp_path / "long.gz", idx_bytes(images, IMAGES_MAGIC) + b"junk")
    with pytest.raises(IdxError, match=r"long\.gz: 4 unexpected bytes"):
        data.read_idx_gz(p, IMAGES_MAGIC)


def test_sha_mismatch_names_file_and_digests(tmp_path, images):
    p = write_gz(tmp_path / "tampered.gz", idx_bytes(images, IMAGES_MAGIC))
    with pytest.raises(IdxError, match=r"tampered\.gz: SHA-256 mismatch: file is [0-9a-f]{64}.*expected " + "a" * 64):
        data.read_idx_gz(p, IMAGES_MAGIC, sha256_gz="a" * 64, sha256_raw="b" * 64)


def test_missing_files_in_data_dir(tmp_path):
    with pytest.raises(IdxError, match=r"missing train-images-idx3-ubyte\.gz"):
        data.find_data_dir(str(tmp_path))


def test_split_is_fixed_disjoint_and_complete():
    tr, val = data.split_train_val(1000, 100)
    tr2, val2 = data.split_train_val(1000, 100)
    np.testing.assert_array_equal(val, val2)
    assert len(val) == 100 and len(tr) == 900
    assert not set(tr) & set(val)
    assert sorted(set(tr) | set(val)) == list(range(1000))
