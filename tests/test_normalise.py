"""inclinet.normalise: one canonical form whatever the polarity, frame, sky, stretch and colour balance."""

import numpy as np
import pytest

from inclinet import normalise
from inclinet.axial import axial_ratio
from inclinet.normalise import NOISE_FLOOR, SKY_LEVEL, TARGET_SIGMA, image_statistics, normalise_image

SIZE = 64


def disk(size, q, *, radius, centre=None, noise=2.0, seed=0):
    """Surface brightness (0..1) of an exponential disk with axial ratio ``q``, plus noise (in 1/255 units)."""
    rng = np.random.default_rng(seed)
    cy, cx = centre if centre is not None else ((size - 1) / 2, (size - 1) / 2)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot((xx - cx) / radius, (yy - cy) / (radius * q))
    return np.exp(-2.0 * r) + rng.normal(0, noise / 255.0, (size, size))


def gray_dark_on_light(light, sky=235.0, depth=200.0):
    plane = np.clip(np.rint(sky - depth * light), 0, 255).astype(np.uint8)
    return np.repeat(plane[..., None], 3, axis=2)


def colour_light_on_dark(light, weights=(1.0, 0.85, 0.6), sky=8.0):
    image = sky + 230.0 * light[..., None] * np.asarray(weights)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def major_sigma(image):
    plane = np.clip(image.astype(float).mean(axis=2) - SKY_LEVEL - 10, 0, None)
    yy, xx = np.indices(plane.shape)
    total = plane.sum()
    x0, y0 = (plane * xx).sum() / total, (plane * yy).sum() / total
    mxx = (plane * (xx - x0) ** 2).sum() / total
    myy = (plane * (yy - y0) ** 2).sum() / total
    return np.sqrt(max(mxx, myy)), (x0, y0)


def test_output_is_bright_on_dark_with_the_canonical_sky():
    light = disk(256, 0.5, radius=20)
    for image in (gray_dark_on_light(light), colour_light_on_dark(light)):
        out = normalise_image(image, SIZE)
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
        assert abs(np.median(out[:6]) - SKY_LEVEL) <= 3
        assert out[SIZE // 2 - 2 : SIZE // 2 + 2, SIZE // 2 - 2 : SIZE // 2 + 2].mean() > 150


def test_polarity_is_unified():
    light = disk(128, 0.4, radius=14)
    dark_on_light = normalise_image(gray_dark_on_light(light), SIZE).astype(float)
    inverted = 255 - gray_dark_on_light(light)
    light_on_dark = normalise_image(inverted, SIZE).astype(float)
    assert np.abs(dark_on_light - light_on_dark).mean() < 3.0


def test_size_in_frame_and_centring_do_not_matter():
    sigmas, centres = [], []
    for radius, centre in ((14, None), (32, None), (18, (110, 140))):
        out = normalise_image(gray_dark_on_light(disk(256, 0.5, radius=radius, centre=centre, seed=radius)), SIZE)
        sigma, centre_out = major_sigma(out)
        sigmas.append(sigma)
        centres.append(centre_out)
    assert max(sigmas) / min(sigmas) < 1.15
    assert all(abs(x - (SIZE - 1) / 2) < 1.5 and abs(y - (SIZE - 1) / 2) < 1.5 for x, y in centres)
    # Without the normalisation the sizes differ by a factor 3.
    assert sigmas[0] == pytest.approx(sigmas[1], rel=0.15)


@pytest.mark.parametrize("q", [0.25, 0.5, 0.8])
def test_axial_ratio_is_kept(q):
    light = disk(256, q, radius=20, seed=1)
    before = axial_ratio(gray_dark_on_light(light))
    after = axial_ratio(normalise_image(gray_dark_on_light(light), SIZE))
    assert after == pytest.approx(before, abs=0.05)


def test_stretch_colour_balance_and_sky_gradient_are_normalised_away():
    light = disk(256, 0.5, radius=20, seed=2)
    raw = colour_light_on_dark(light)
    reference = normalise_image(raw, SIZE).astype(float)
    # A harder asinh stretch (the SDSS kind), another colour balance, a sky gradient.
    stretched = colour_light_on_dark(np.arcsinh(light / 0.05) / np.arcsinh(1 / 0.05))
    balance = colour_light_on_dark(light, weights=(0.6, 0.85, 1.0))
    gradient = colour_light_on_dark(light + np.linspace(0, 0.15, 256)[None, :])
    centre = slice(SIZE // 4, 3 * SIZE // 4)
    for other in (stretched, balance, gradient):
        normalised = normalise_image(other, SIZE).astype(float)
        after = np.abs(normalised[centre, centre] - reference[centre, centre]).mean()
        before = np.abs(other.astype(float) - raw.astype(float))[108:148, 108:148].mean()
        assert after < 7.0 and after < 0.6 * before, (after, before)


def test_rotation_corners_are_not_sky():
    light = disk(256, 0.5, radius=20, seed=3)
    image = gray_dark_on_light(light)
    cornered = image.copy()
    yy, xx = np.mgrid[:256, :256] - 127.5
    angle = np.radians(30)
    u, v = xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)
    cornered[np.maximum(np.abs(u), np.abs(v)) > 150] = 0  # black corners of a rotated cutout
    out, info = normalise_image(cornered, SIZE, with_info=True)
    assert info.fill_fraction > 0.03 and info.polarity == "dark-on-light"
    clean = normalise_image(image, SIZE)
    assert np.abs(out.astype(float) - clean.astype(float)).mean() < 3.0
    assert out[:4, :4].mean() < SKY_LEVEL + 10  # the corners became sky, not a bright frame


def test_noise_floor_and_determinism():
    light = disk(128, 0.5, radius=12, noise=0.0)
    image = colour_light_on_dark(light)
    out = normalise_image(image, SIZE)
    sky = out[:8, :, 0].astype(float)
    assert sky.std() >= 0.8 * NOISE_FLOOR
    assert np.array_equal(out, normalise_image(image.copy(), SIZE))


def test_blank_image_is_not_detected_and_small_images_are_refused():
    out, info = normalise_image(np.full((64, 64), 200, np.uint8), 32, with_info=True)
    assert not info.detected and out.shape == (32, 32, 3)
    with pytest.raises(ValueError, match="too small"):
        normalise_image(np.zeros((4, 4), np.uint8), 32)
    with pytest.raises(ValueError, match="invalid size"):
        normalise_image(np.zeros((16, 16), np.uint8), 4)


def test_image_statistics_tell_a_galaxy_from_a_star_field():
    galaxy = normalise_image(gray_dark_on_light(disk(256, 0.5, radius=20)), SIZE)
    rng = np.random.default_rng(0)
    field = np.full((256, 256), 230.0)
    for x, y in rng.integers(10, 246, size=(40, 2)):
        field[y - 2 : y + 3, x - 2 : x + 3] = 40
    stars = normalise_image(np.clip(field, 0, 255).astype(np.uint8), SIZE)
    stats = image_statistics(np.stack([galaxy, stars]))
    columns = {name: stats[:, k] for k, name in enumerate(normalise.STATISTICS)}
    assert columns["edge_flux"][1] > 5 * columns["edge_flux"][0]
    assert columns["asymmetry"][1] > columns["asymmetry"][0]
    assert 0.0 < TARGET_SIGMA < 0.25


def test_a_clipped_black_sky_is_sky_not_fill():
    light = disk(128, 0.5, radius=12, noise=0.3)
    image = colour_light_on_dark(light, sky=0.0)  # most of the frame is exactly 0
    assert (image == 0).all(axis=2).mean() > 0.5
    out, info = normalise_image(image, SIZE, with_info=True)
    assert info.fill_fraction == 0.0 and info.detected
    assert out[SIZE // 2, SIZE // 2].mean() > 150


def _reference_cases():
    """Synthetic inputs covering every branch of the normaliser, and augmented views as augmentation makes them."""
    from _prep_data import galaxy_image, inclination_to_q

    from inclinet import augmentation

    cases = []
    for seed, (q, radius, centre, side) in enumerate(
        [
            (0.3, 20, None, 256),
            (0.6, 14, (110, 140), 256),
            (0.9, 40, None, 256),
            (0.5, 6, (60, 70), 128),
            (0.4, 60, None, 512),
            (0.2, 30, (200, 300), 512),
        ]
    ):
        light = disk(side, q, radius=radius, centre=centre, seed=seed)
        cases += [gray_dark_on_light(light), colour_light_on_dark(light)]
    cornered = gray_dark_on_light(disk(256, 0.5, radius=20, seed=3))
    yy, xx = np.mgrid[:256, :256] - 127.5
    u, v = xx * np.cos(0.5) + yy * np.sin(0.5), -xx * np.sin(0.5) + yy * np.cos(0.5)
    cornered[np.maximum(np.abs(u), np.abs(v)) > 150] = 0
    cases.append(cornered)
    cases.append(colour_light_on_dark(disk(128, 0.5, radius=12, noise=0.3), sky=0.0))
    cases.append(np.full((64, 64), 200, np.uint8))
    field = np.full((256, 256), 230, np.uint8)
    for x, y in np.random.default_rng(0).integers(10, 246, size=(40, 2)):
        field[y - 2 : y + 3, x - 2 : x + 3] = 40
    cases.append(field)
    cases.append(gray_dark_on_light(disk(256, 0.5, radius=20, seed=9))[28:228])  # not square
    for k in range(24):
        colour = k % 2 == 0
        raw = galaxy_image(256, inclination_to_q(45 + 2 * k), angle_deg=7 * k, colour=colour, seed=k, noise=2.0)
        chain = augmentation.augment_colour if colour else augmentation.augment_gray
        cases.append(chain(normalise_image(raw, 128)[None], np.random.default_rng(k))[0])
    return cases


def test_outputs_match_the_reference_normaliser():
    """The speed-ups of normalise.py (exact medians, normal equations, row/column moments, batched
    percentiles) change nothing but float rounding: against the normaliser as it was
    before them (tests/_normalise_reference.py), every output pixel is within 1 grey level.

    Rounding can still tip a threshold decision (a pixel of the smoothed image that sits on the
    detection threshold joins or leaves the galaxy region), which moves the stretch by a small
    fraction of a level and so flips pixels that sit near a rounding boundary by 1 level: in
    one image at most 2% of pixels, over all of them at most 1 in 1,000. A real change (another
    stretch, sky, centre or zoom) moves most pixels by several levels.
    """
    import _normalise_reference as reference

    differing = total = 0
    for size in (64, 128):
        for index, image in enumerate(_reference_cases()):
            expected, expected_info = reference.normalise_image(image, size, with_info=True)
            got, info = normalise_image(image, size, with_info=True)
            difference = np.abs(expected.astype(int) - got.astype(int))
            assert difference.max() <= 1, (size, index, difference.max())
            assert (difference > 0).mean() <= 0.02, (size, index, (difference > 0).mean())
            differing += int((difference > 0).sum())
            total += difference.size
            for key, value in expected_info.as_dict().items():
                if isinstance(value, float):
                    assert getattr(info, key) == pytest.approx(
                        getattr(expected_info, key), rel=1e-6, abs=1e-6, nan_ok=True
                    ), (size, index, key)
                else:
                    assert info.as_dict()[key] == value, (size, index, key)
    assert differing <= total / 1_000, (differing, total)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 11, 3840])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_median_helper_is_np_median(n, dtype):
    values = np.random.default_rng(n).normal(100, 5, size=n).astype(dtype)
    got, expected = normalise._median(values), np.median(values)
    assert got == expected and got.dtype == expected.dtype
    assert np.isnan(normalise._median(np.zeros(0)))


def test_batch_outputs_match_normalise_image(monkeypatch):
    """normalise_batch (what augmentation calls) gives normalise_image's outputs: the reference inputs
    stacked by shape, gray and colour mixed as in an augmented batch, including the fill, blank and
    star-field cases it hands to normalise_image one by one; every pixel within 1 grey level, and
    the result does not depend on how the stack is cut into chunks.
    """
    by_shape = {}
    for image in _reference_cases():
        by_shape.setdefault(image.shape, []).append(image)
    assert any(len(images) > 10 for images in by_shape.values())
    differing = total = 0
    for size in (64, 128):
        for images in by_shape.values():
            got = normalise.normalise_batch(np.stack(images), size)
            assert got.shape == (len(images), size, size, 3) and got.dtype == np.uint8
            for index, (image, out) in enumerate(zip(images, got)):
                difference = np.abs(normalise_image(image, size).astype(int) - out.astype(int))
                assert difference.max() <= 1, (size, image.shape, index, difference.max())
                assert (difference > 0).mean() <= 0.02, (size, image.shape, index)
                differing += int((difference > 0).sum())
                total += difference.size
            monkeypatch.setattr(normalise, "BATCH_CHUNK", 5)
            assert np.array_equal(normalise.normalise_batch(np.stack(images), size), got)
            monkeypatch.undo()
    assert differing <= total / 1_000, (differing, total)
    with pytest.raises(ValueError, match="size"):
        normalise.normalise_batch(np.zeros((2, 32, 32, 3), np.uint8), 4)
    with pytest.raises(ValueError, match="shape"):
        normalise.normalise_batch(np.zeros((2, 32, 32, 2), np.uint8), 32)


def test_batch_helpers_compute_what_they_replace():
    """The batch path's shortcuts give the values of the calls they stand for, exactly."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 7, 100, 101, 4321]:
        for dtype in (np.float32, np.float64):
            values = (rng.normal(size=(3, n)) * 50).astype(dtype)
            expected = np.percentile(values, 99.0, axis=1)
            got = normalise._percentile_99(values)
            assert np.array_equal(got, expected) and got.dtype == expected.dtype
            assert normalise._percentile_99(values[0]) == np.percentile(values[0], 99.0)
    planes = (rng.normal(size=(4, 40, 33)) * 10).astype(np.float32)
    for mode in ("nearest", "reflect"):
        expected = np.stack([ndimage.gaussian_filter(plane, 1.0, mode=mode) for plane in planes])
        assert np.array_equal(normalise._smoothed(planes, 1.0, mode), expected)
    for _ in range(20):
        height, width = (int(side) for side in rng.integers(16, 200, size=2))
        size = int(rng.choice([32, 64, 128]))
        x0, y0 = rng.uniform(0, width, size=10), rng.uniform(0, height, size=10)
        window = rng.uniform(max(height, width) / 4, 2 * max(height, width), size=10)
        ones = np.ones((1, height, width), np.float32)
        expected = [normalise._resample(ones, (x, y), w, size)[0] > 0.5 for x, y, w in zip(x0, y0, window)]
        assert np.array_equal(normalise._covered((height, width), x0, y0, window, size), expected)
