import torch

from fmnist import augment


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28)
    # A bright block on black, like a garment: checks that background stays background.
    x[:, :, 8:20, 10:18] = torch.rand(n, 1, 12, 8, generator=g) * 0.5 + 0.5
    return x


def test_augment_shape_dtype_range():
    x = batch()
    y = augment.augment(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.equal(x, y)


def test_augment_is_reproducible_from_the_generator():
    x = batch()
    a = augment.augment(x, torch.Generator().manual_seed(7))
    b = augment.augment(x, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)


def test_each_step_keeps_range_and_shape():
    x, g = batch(), torch.Generator().manual_seed(2)
    for fn in (augment.random_affine, augment.brightness, augment.blur_sharpen, augment.random_erase):
        y = fn(x, g)
        assert y.shape == x.shape, fn.__name__
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 + 1e-6, fn.__name__


def test_brightness_keeps_black_background():
    x = batch()
    y = augment.brightness(x, torch.Generator().manual_seed(3), p=1.0)
    assert float(y[:, :, :8].abs().max()) == 0.0


def test_identity_affine_is_identity():
    x = batch(8)
    y = augment.random_affine(x, torch.Generator().manual_seed(0), max_shift=0.0, scale=(1.0, 1.0),
                              max_deg=0.0, p_flip=0.0)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_probes():
    x = batch(4)
    s = augment.shift(x, 3, 3)
    torch.testing.assert_close(s[:, :, 11:23, 13:21], x[:, :, 8:20, 10:18])
    assert float(s[:, :, :3].abs().max()) == 0.0
    back = augment.shift(augment.shift(x, -3, -3), 3, 3)
    torch.testing.assert_close(back, x)   # the block is far from the edges, nothing is lost
    small = augment.shrink(x, 0.8)
    assert small.shape == x.shape
    assert float(small[:, :, :3].abs().max()) == 0.0 and float(small[:, :, 25:].abs().max()) == 0.0
    for name, fn in augment.PROBES.items():
        assert fn(x).shape == x.shape, name


def test_strength_scales_how_many_images_are_touched():
    x = batch(n=512)
    untouched = augment.augment(x, torch.Generator().manual_seed(4), strength=0.0)
    torch.testing.assert_close(untouched, x)

    changed = lambda y: float((y - x).abs().flatten(1).amax(1).gt(1e-6).float().mean())
    full = changed(augment.augment(x, torch.Generator().manual_seed(4)))
    half = changed(augment.augment(x, torch.Generator().manual_seed(4), strength=0.5))
    assert 0.3 < half < full < 1.0, (half, full)
