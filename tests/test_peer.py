"""The classical peer: axis ratios by several methods, PSF correction, calibration and choice."""

import math

import numpy as np
import pytest

from inclinet import peer

galsim = pytest.importorskip("galsim")

PSF_FWHM = 3.0  # pixels


def _draw(
    q, *, size=48, hlr=6.0, angle=30.0, psf_fwhm=None, dark_on_white=True, noise=1.5, seed=0, profile="exponential"
):
    """uint8 image of a sheared galaxy of axis ratio ``q`` (linear flux scale, sky + Gaussian noise)."""
    if profile == "exponential":
        galaxy = galsim.Exponential(half_light_radius=hlr)
    else:
        galaxy = galsim.Gaussian(half_light_radius=hlr)
    galaxy = galaxy.shear(q=q, beta=angle * galsim.degrees)
    if psf_fwhm:
        galaxy = galsim.Convolve(galaxy, galsim.Moffat(beta=3.0, fwhm=psf_fwhm))
    image = galaxy.drawImage(nx=size, ny=size, scale=1.0, dtype=np.float64).array
    image = 200.0 * image / image.max()
    image = image + np.random.default_rng(seed).normal(0.0, noise, image.shape)
    pixels = 225.0 - image if dark_on_white else 15.0 + image
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("dark_on_white", [True, False])
@pytest.mark.parametrize("q", [0.3, 0.55, 0.8])
@pytest.mark.parametrize("size", [32, 64])
def test_every_method_recovers_q(q, dark_on_white, size):
    hlr = size / 9.0
    images = np.stack(
        [
            _draw(q, size=size, hlr=hlr, angle=angle, dark_on_white=dark_on_white, seed=k)
            for k, angle in enumerate((0.0, 35.0, 100.0))
        ]
    )
    measured = peer.measure(images)
    assert set(measured) == set(peer.METHODS)
    # Adaptive moments are unbiased for these smooth profiles; the thresholded and
    # isophotal shapes of a small pixelised, noisy ellipse are rounder by a few hundredths.
    tolerance = {"moments": 0.05, "adaptive": 0.02, "isophote": 0.05}
    for method, values in measured.items():
        assert values.shape == (3,)
        assert np.all(np.abs(values - q) < tolerance[method]), (method, values)


def test_colour_and_gray_batches_agree():
    gray = np.stack([_draw(0.5, seed=k, dark_on_white=False) for k in range(2)])
    colour = np.repeat(gray[..., None], 3, axis=3)
    a, b = peer.measure(gray), peer.measure(colour)
    for method in peer.METHODS:
        np.testing.assert_allclose(a[method], b[method], atol=1e-9)


def test_psf_correction_reduces_bias_on_a_small_galaxy():
    q = 0.6
    images = np.stack(
        [_draw(q, size=40, hlr=2.5, psf_fwhm=PSF_FWHM, noise=0.5, seed=k, angle=20.0 * k) for k in range(3)]
    )
    raw = peer.measure(images, methods=("adaptive",))["adaptive"]
    corrected = peer.measure(images, psf_fwhm_pixels=PSF_FWHM, methods=("adaptive",))["adaptive"]
    # The PSF rounds the galaxy; subtracting its moments brings q back.
    assert np.all(raw - q > 0.08)
    assert np.all(np.abs(corrected - q) < 0.02)
    assert np.all(np.abs(corrected - q) < 0.2 * np.abs(raw - q))
    # Per-image FWHM, NaN meaning unknown (left uncorrected).
    mixed = peer.measure(images, psf_fwhm_pixels=[PSF_FWHM, math.nan, PSF_FWHM], methods=("adaptive",))
    np.testing.assert_allclose(mixed["adaptive"], [corrected[0], raw[1], corrected[2]])


def test_bad_images_give_nan_not_an_exception():
    good = _draw(0.5)
    blank = np.full_like(good, 230)
    black = np.zeros_like(good)
    speckle = np.random.default_rng(3).integers(0, 256, good.shape, dtype=np.uint8)
    batch = np.stack([blank, good, black, speckle])
    measured = peer.measure(batch)
    for method, values in measured.items():
        assert np.isnan(values[[0, 2]]).all(), method
        assert np.isfinite(values[1]), method
        # Pure noise may or may not yield a number, but never an exception or q outside (0, 1].
        assert np.isnan(values[3]) or 0.0 < values[3] <= 1.0
    assert np.isnan(peer.measure(np.full((2, 3, 3), 200, dtype=np.uint8))["adaptive"]).all()
    with pytest.raises(ValueError, match="unknown peer method"):
        peer.measure(batch, methods=("nope",))


def test_psf_fwhm_in_pixels():
    # 2 x D25 = 2 arcmin over 256 px: 0.46875 arcsec per pixel.
    assert peer.psf_fwhm_pixels(1.5, 1.0, 256) == pytest.approx(1.5 / 0.46875)
    assert peer.psf_fwhm_pixels(1.5, 1.0, 256, size=64) == pytest.approx(1.5 / 0.46875 / 4)


def _simulated_q(q0, n=400, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    inclination = rng.uniform(45.0, 90.0, n)
    i = np.radians(inclination)
    q = np.sqrt(np.cos(i) ** 2 + (q0 * np.sin(i)) ** 2) + rng.normal(0.0, noise, n)
    return inclination, np.clip(q, 0.01, 1.0)


def test_calibration_recovers_a_known_q0():
    truth, q = _simulated_q(0.27)
    fitted = peer.fit_method(q, truth, linear=False)
    assert fitted.q0 == pytest.approx(0.27, abs=0.015)
    assert fitted.slope == 1.0 and fitted.intercept == 0.0
    assert fitted.rms < peer.scores(peer.peer_inclination(q, 0.2), truth)["rms"]
    assert abs(fitted.bias) < 0.5 and fitted.n == len(q) and fitted.coverage == 1.0
    # A linear correction may only lower the RMS on the fitting set.
    assert peer.fit_method(q, truth).rms <= fitted.rms + 1e-9


def test_fit_peer_and_best_peer_name_the_better_method():
    truth, good = _simulated_q(0.2, seed=1)
    _, bad = _simulated_q(0.2, noise=0.08, seed=2)
    half = np.full(len(truth), np.nan)
    half[::3] = good[::3]  # perfect where it measures, but mostly unmeasured
    measurements = {"moments": bad, "adaptive": good, "isophote": half}
    calibration = peer.fit_peer(measurements, truth)
    assert calibration.best == "adaptive"
    assert set(calibration.methods) == set(measurements)
    name, values = peer.best_peer(measurements, truth)
    assert name == "adaptive"
    np.testing.assert_allclose(values, peer.peer_inclination(good, 0.2))
    name, values = peer.best_peer(measurements, truth, calibration=calibration)
    assert name == "adaptive" and values.min() >= 45.0 and values.max() <= 90.0
    applied = calibration.apply(measurements)
    assert np.isnan(applied["isophote"]).sum() == np.isnan(half).sum()
    restored = peer.PeerCalibration.from_dict(calibration.as_dict())
    np.testing.assert_allclose(restored.inclination(measurements), calibration.inclination(measurements))
    with pytest.raises(ValueError, match="at least 3"):
        peer.fit_method([0.5, math.nan], [60.0, 70.0])


def test_fit_peer_on_images_and_inclination_clipping():
    truth = np.array([50.0, 60.0, 70.0, 80.0, 88.0])
    q = np.sqrt(np.cos(np.radians(truth)) ** 2 + (0.2 * np.sin(np.radians(truth))) ** 2)
    images = np.stack([_draw(float(v), seed=k) for k, v in enumerate(q)])
    calibration = peer.fit_peer(images, truth, linear=False)
    assert calibration.best in peer.METHODS
    assert calibration.methods["adaptive"].rms < 4.0
    assert peer.peer_inclination([1.0, 0.05, math.nan]).tolist()[:2] == [45.0, 90.0]
    assert np.isnan(peer.peer_inclination([math.nan]))[0]


def test_rotation_corners_are_not_sky():
    q = 0.45
    clean = _draw(q, size=64, hlr=6.0, angle=10.0)
    cornered = clean.copy()
    yy, xx = np.indices(cornered.shape)
    cornered[xx + yy < 14] = 0  # a black triangle left by rotating the cutout
    cornered[(63 - xx) + (63 - yy) < 14] = 255
    for method, values in peer.measure(np.stack([clean, cornered])).items():
        assert abs(values[1] - values[0]) < 0.02, method
    assert peer.psf_fwhm_pixels(1.5, 1.0, 256, fov_arcsec=240.0) == pytest.approx(1.5 / (240.0 / 256))
