"""remeasure refuses to move a model to a conversion that changes its
training photos. These tests run the real tagd binary (built by the
project's `make test` before the training tests) on the fixture photos."""

import os

import pytest
from PIL import Image

from fmnist import remeasure

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TAGD = os.path.join(ROOT, "target", "debug", "tagd")
PHOTOS = os.path.join(ROOT, "tests", "fixtures", "photos")

if not os.path.exists(TAGD) and os.environ.get("CI"):
    raise RuntimeError(f"CI needs {TAGD}: run the project's `make test`, which builds it first")
pytestmark = pytest.mark.skipif(not os.path.exists(TAGD), reason=f"not built yet: {TAGD}")


def photo_folder(folder, names):
    os.makedirs(folder)
    for name in names:
        os.symlink(os.path.join(PHOTOS, name), os.path.join(folder, name))
    return folder


def model_on_white(path):
    """A studio shot: dark hair, a shirt in a blue and yellow check, jeans
    running off the bottom, on white. fmnist-v3 keeps the whole figure, v4
    the shirt."""
    img = Image.new("RGB", (120, 160), (255, 255, 255))
    px = img.load()
    for y in range(160):
        for x in range(120):
            if 50 <= x < 70 and 4 <= y < 30:
                px[x, y] = (40, 30, 25)
            elif 30 <= x < 90 and 30 <= y < 100:
                px[x, y] = (40, 90, 190) if (x // 8 + y // 8) % 2 else (230, 200, 40)
            elif 36 <= x < 84 and y >= 100:
                px[x, y] = (35, 40, 60)
    img.save(path, quality=95)


def test_photos_of_clothes_alone_convert_the_same_with_v3_and_v4(tmp_path):
    photos = photo_folder(str(tmp_path / "photos"), ["shoes.jpg", "t-shirt.jpg", "pants.jpg", "dress.jpg"])
    assert remeasure.differing_conversions(TAGD, photos, "fmnist-v3", "fmnist-v4") == []


def test_a_photo_the_new_conversion_changes_is_found(tmp_path):
    photos = photo_folder(str(tmp_path / "photos"), ["shoes.jpg"])
    model_on_white(os.path.join(photos, "model.jpg"))
    assert remeasure.differing_conversions(TAGD, photos, "fmnist-v3", "fmnist-v4") == ["model.png"]


def test_the_manifest_line_is_changed_and_nothing_else(tmp_path):
    path = tmp_path / "model.toml"
    path.write_text('name = "x"\npreprocessing = "fmnist-v3"\n[input]\nname = "image"\n')
    remeasure.set_manifest_preprocessing(str(path), "fmnist-v4")
    assert path.read_text() == 'name = "x"\npreprocessing = "fmnist-v4"\n[input]\nname = "image"\n'
