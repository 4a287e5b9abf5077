"""Image loading (modes, formats, broken files), padding and anti-aliased resizing."""

import numpy as np
import pytest
from PIL import Image

from inclinet.errors import ConfigError, InputError
from inclinet.images import load_image, pad_to_square, prepare_image, resize_square


@pytest.fixture
def gray():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(24, 40), dtype=np.uint8)


def _save(path, array, mode=None, **kwargs):
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **kwargs)
    return path


def test_gray_png_becomes_three_identical_channels(tmp_path, gray):
    image = load_image(_save(tmp_path / "g.png", gray))
    assert image.shape == (24, 40, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], gray)


def test_alpha_is_dropped_not_averaged(tmp_path, gray):
    # The original averaged L with an all-255 alpha, washing the image out.
    alpha = np.full_like(gray, 255)
    path = tmp_path / "la.png"
    Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)]).save(path)
    assert Image.open(path).mode == "LA"
    image = load_image(path)
    np.testing.assert_array_equal(image[:, :, 1], gray)
    rgba = np.dstack([gray, 255 - gray, gray // 2, np.zeros_like(gray)])
    image = load_image(_save(tmp_path / "rgba.png", rgba))
    np.testing.assert_array_equal(image, rgba[:, :, :3])


def test_sixteen_bit_and_palette(tmp_path, gray):
    path = tmp_path / "16.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(load_image(path)[:, :, 2], gray)
    palette = Image.fromarray(gray).convert("P")
    palette.save(tmp_path / "p.png")
    image = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(image[:, :, 0], image[:, :, 2])
    assert np.abs(image[:, :, 0].astype(int) - gray).max() <= 8


def test_jpeg_and_gif(tmp_path, gray):
    yy, xx = np.indices((24, 40))
    rgb = np.dstack([xx * 6, yy * 10, 255 - xx * 6]).astype(np.uint8)
    image = load_image(_save(tmp_path / "c.jpg", rgb, quality=95))
    assert image.shape == (24, 40, 3)
    assert np.abs(image.astype(int) - rgb).mean() < 4
    gif = load_image(_save(tmp_path / "g.gif", gray))
    assert gif.shape == (24, 40, 3)
    np.testing.assert_array_equal(gif[:, :, 0], gif[:, :, 1])


def test_broken_files_raise_input_error_naming_the_file(tmp_path, gray):
    with pytest.raises(InputError, match=r"missing\.png: image not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png: empty image file"):
        load_image(tmp_path / "empty.png")
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64), dtype=np.uint8)
    for name in ("cut.png", "cut.jpg"):
        data = _save(tmp_path / ("full" + name[3:]), noise).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError, match=rf"{name.replace('.', '[.]')}: corrupt or truncated"):
            load_image(tmp_path / name)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match=r"text\.png: not a readable image"):
        load_image(tmp_path / "text.png")
    _save(tmp_path / "bitmap.bmp", gray)
    with pytest.raises(InputError, match=r"bitmap\.bmp: unsupported image format BMP"):
        load_image(tmp_path / "bitmap.bmp")


def test_pad_to_square_centres_without_cropping(gray):
    padded = pad_to_square(gray, 255)
    assert padded.shape == (40, 40)
    np.testing.assert_array_equal(padded[8:32], gray)
    assert (padded[:8] == 255).all() and (padded[32:] == 255).all()
    tall = np.zeros((7, 4, 3), dtype=np.uint8)
    padded = pad_to_square(tall, 9)
    assert padded.shape == (7, 7, 3)
    # Odd difference: the extra column goes after the image.
    assert (padded[:, :1] == 9).all() and (padded[:, 1:5] == 0).all() and (padded[:, 5:] == 9).all()
    square = np.ones((5, 5), dtype=np.uint8)
    assert pad_to_square(square, 0) is not square
    for bad in (-1, 256, 2.5, "white"):
        with pytest.raises(ConfigError, match="invalid fill"):
            pad_to_square(gray, bad)


def test_resize_is_anti_aliased():
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    small = resize_square(checker, 16)
    assert small.shape == (16, 16, 3) and small.dtype == np.uint8
    # Point sampling would give pure 0 or 255; a proper filter averages to mid grey.
    assert np.abs(small.astype(int) - 127).max() <= 8
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    up = resize_square(np.dstack([ramp] * 3), 64)
    assert up.shape == (64, 64, 3)
    assert (np.diff(up[32, 4:-4, 0].astype(int)) >= -1).all()
    np.testing.assert_array_equal(resize_square(checker, 64)[:, :, 0], checker)


def test_resize_rejects_bad_input():
    with pytest.raises(ValueError, match="not square"):
        resize_square(np.zeros((4, 6), dtype=np.uint8), 2)
    with pytest.raises(ConfigError, match="invalid size"):
        resize_square(np.zeros((4, 4), dtype=np.uint8), 0)


def test_prepare_image(tmp_path, gray):
    path = _save(tmp_path / "g.png", gray)
    image = prepare_image(path, 20, fill=255)
    assert image.shape == (20, 20, 3) and image.dtype == np.uint8
    # The padding (white, top and bottom rows) survives the resize.
    assert image[0].min() >= 250 and image[-1].min() >= 250
    assert image[8:12].mean() < 200
