"""The classical peer: axial-ratio inclinations by several methods, calibrated like the CNNs.

Every method measures the minor-to-major axis ratio ``q`` of the central galaxy of an 8-bit
image (dark galaxy on a white sky or bright galaxy on a dark sky, grayscale or colour) and
returns NaN when it cannot; none raises for a bad image inside a batch.

``moments``
    Thresholded, unweighted second moments of the central object
    (:func:`inclinet.axial.axial_ratio`).
``adaptive``
    Adaptive (elliptical Gaussian weighted) moments, GalSim HSM ``FindAdaptiveMom``, on the
    background-subtracted image with the galaxy made bright whatever its polarity and every
    other detected object blanked. With a known PSF (FWHM in pixels), corrected by
    re-Gaussianization (``galsim.hsm.EstimateShear``) against a Moffat PSF of that width;
    without it, uncorrected.
``isophote``
    Second moments of the filled regions inside outer isophotes (fixed fractions of the
    galaxy's peak above the sky, on a lightly smoothed image): the shape of the outer disk.
    The shape of an isophote does not depend on the stretch; which isophote a fraction of
    the peak picks does, mildly (a level 0.08-0.18 changes the RMS by a few tenths).

The inclination follows from ``cos^2 i = (q^2 - q0^2) / (1 - q0^2)``, clipped to 45-90 deg
like the CNN. :func:`fit_peer` fits ``q0`` (and a linear correction of the inclination)
per method on labelled galaxies; :func:`best_peer` names the method that does best.

Examples
--------
>>> q = measure(images, psf_fwhm_pixels=psf)           # doctest: +SKIP
>>> calibration = fit_peer(q_train, inc_train)            # doctest: +SKIP
>>> method, inclinations = calibration.best, calibration.apply(q_test)[calibration.best]  # doctest: +SKIP
"""

import dataclasses
import math
import time

import numpy as np
from scipy import ndimage

from inclinet.axial import axial_ratio, inclination_from_axial_ratio, segment
from inclinet.errors import InputError

#: The methods :func:`measure` knows, in order.
METHODS = ("moments", "adaptive", "isophote")

#: The inclination range of the regression models: the peer is clipped to it.
INCLINATION_MIN = 45.0
INCLINATION_MAX = 90.0

#: PSFs narrower than this (FWHM, pixels) are not corrected for: HSM cannot measure them and
#: their effect on a galaxy many pixels wide is negligible.
MIN_PSF_FWHM = 1.0

#: The fixed intrinsic thickness of the uncalibrated peer.
DEFAULT_Q0 = 0.2

#: Outer isophote levels of the ``isophote`` method, as fractions of the galaxy's peak above sky
#: (on the image's own stretch; chosen on a synthetic universe of another seed than the benchmark's).
ISOPHOTE_LEVELS = (0.1, 0.13, 0.16)

_FAILURES = (InputError, ValueError, RuntimeError, ArithmeticError)


# -- preparation ----------------------------------------------------------------------------


def _galsim():
    try:
        import galsim
    except ImportError as exc:  # pragma: no cover - galsim is a dependency
        raise InputError(f"the adaptive-moment peer needs GalSim ({exc}); pip install galsim") from None
    return galsim


def fill_free(image):
    """Grayscale float copy of ``image`` with fill regions replaced by the sky level.

    Fill regions are solid pure-black or near-white (>= 248) areas touching the frame, such
    as the corners left by rotating a cutout or padding; they are not sky and would bias
    the background and the galaxy's shape. They are set to the median of the remaining
    border pixels.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` or ``(H, W, C)`` image.

    Returns
    -------
    numpy.ndarray
        float64 ``(H, W)`` image (the mean of the channels).
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image of shape {image.shape} is not (H, W) or (H, W, C)")
    channels = image[..., :3] if image.ndim == 3 else image[..., None]
    gray = channels.astype(np.float64).mean(axis=2)
    flat = np.all(channels == 0, axis=2) | np.all(channels >= 248, axis=2)
    minimum = max(16, flat.size // 1000)
    if flat.sum() < minimum or min(gray.shape) < 4:
        return gray
    flat = ndimage.binary_opening(flat, structure=np.ones((3, 3), bool))
    labels, _ = ndimage.label(flat)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge > 0]
    if not len(edge):
        return gray
    keep = edge[np.asarray(ndimage.sum(flat, labels, index=edge)) >= minimum]
    if not len(keep):
        return gray
    fill = ndimage.binary_dilation(np.isin(labels, keep), iterations=2)
    border = np.zeros_like(fill)
    strip = max(1, min(gray.shape) // 16)
    border[:strip], border[-strip:], border[:, :strip], border[:, -strip:] = True, True, True, True
    sky = gray[border & ~fill]
    if sky.size == 0:
        return gray
    gray[fill] = float(np.median(sky))
    return gray


def prepare(image):
    """The central galaxy of ``image`` made bright on a zero sky, other objects blanked.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` or ``(H, W, C)`` image (uint8 or float); colour channels are averaged.

    Returns
    -------
    dict
        ``signal`` (float image: difference from the sky level in the galaxy's direction,
        zero on the pixels of any other detected object and their surroundings),
        ``mask`` (bool image of the central object), ``noise`` (per pixel), ``centre``
        (``(y, x)`` flux-weighted centre of the central object) and ``polarity`` (+1 bright
        galaxy on a dark sky, -1 dark on white).

    Raises
    ------
    InputError
        When no object stands out from the sky or the polarity cannot be told.
    ValueError
        When the image has the wrong shape or is too small.
    """
    found = segment(fill_free(image))
    if found["polarity"] == 0:
        raise InputError("the galaxy is neither brighter nor darker than the sky")
    signal = (found["gray"] - found["background"]) * found["polarity"]
    labels, chosen = found["labels"], found["chosen"]
    mask = labels == chosen
    others = (labels > 0) & ~mask
    if others.any():
        others = ndimage.binary_dilation(others, iterations=2) & ~mask
        signal = np.where(others, 0.0, signal)
    weights = np.where(mask, np.clip(signal, 0.0, None), 0.0)
    total = weights.sum()
    if not total > 0:
        raise InputError("no object stands out from the background: cannot measure an axial ratio")
    yy, xx = np.indices(signal.shape, dtype=np.float64)
    centre = (float((weights * yy).sum() / total), float((weights * xx).sum() / total))
    return {"signal": signal, "mask": mask, "noise": found["noise"], "centre": centre, "polarity": found["polarity"]}


def _moment_matrix(weights, centre=None):
    """Second-moment matrix ``[[Mxx, Mxy], [Mxy, Myy]]`` of non-negative ``weights``."""
    total = weights.sum()
    yy, xx = np.indices(weights.shape, dtype=np.float64)
    if centre is None:
        centre = ((weights * yy).sum() / total, (weights * xx).sum() / total)
    dy, dx = yy - centre[0], xx - centre[1]
    mxx = (weights * dx * dx).sum() / total
    myy = (weights * dy * dy).sum() / total
    mxy = (weights * dx * dy).sum() / total
    return np.array([[mxx, mxy], [mxy, myy]])


def _q_from_matrix(matrix):
    """Axis ratio sqrt(minor / major eigenvalue) of a 2x2 moment matrix; NaN if not positive definite."""
    mean = 0.5 * (matrix[0, 0] + matrix[1, 1])
    half_diff = math.hypot(0.5 * (matrix[0, 0] - matrix[1, 1]), matrix[0, 1])
    major, minor = mean + half_diff, mean - half_diff
    if not (major > 0 and minor > 0):
        return math.nan
    return min(1.0, math.sqrt(minor / major))


# -- the methods ----------------------------------------------------------------------------


def moments_q(image):
    """Axis ratio from thresholded unweighted moments (:func:`inclinet.axial.axial_ratio`); NaN on failure.

    Fill regions (rotation corners, padding) are replaced by the sky first (:func:`fill_free`).
    """
    try:
        return axial_ratio(fill_free(image))
    except _FAILURES:
        return math.nan


def _hsm_params(galsim):
    # The default bound on the moments (sigma about 63 px) is too small for 512 px galaxies.
    return galsim.hsm.HSMParams(max_amoment=1.0e6)


def _adaptive_matrix(galsim, array, centre, sigma_guess):
    result = galsim.hsm.FindAdaptiveMom(
        galsim.ImageD(np.ascontiguousarray(array, dtype=np.float64)),
        strict=False,
        hsmparams=_hsm_params(galsim),
        guess_sig=max(float(sigma_guess), 1.0),
        guess_centroid=galsim.PositionD(centre[1] + 1.0, centre[0] + 1.0),
    )
    if result.moments_status != 0 or not result.moments_sigma > 0:
        return None
    shape = result.observed_shape
    e1, e2 = shape.e1, shape.e2
    scale = result.moments_sigma**2 / math.sqrt(max(1.0 - e1 * e1 - e2 * e2, 1e-12))
    return scale * np.array([[1.0 + e1, e2], [e2, 1.0 - e1]])


_PSF_CACHE = {}


def _psf_entry(fwhm_pixels, beta=3.0):
    """``(stamp, adaptive moment matrix or None)`` of the Moffat PSF, cached."""
    # Widths within 1% share a stamp (and its measured moments): far below what matters.
    key = (int(round(math.log(float(fwhm_pixels)) / 0.01)), float(beta))
    if key not in _PSF_CACHE:
        galsim = _galsim()
        fwhm = math.exp(key[0] * 0.01)
        stamp = int(max(15, 2 * math.ceil(6 * fwhm) + 1))
        image = galsim.Moffat(beta=beta, fwhm=fwhm).drawImage(nx=stamp, ny=stamp, scale=1.0, dtype=np.float64)
        _PSF_CACHE[key] = (image, _psf_matrix(galsim, image, fwhm))
    return _PSF_CACHE[key]


def _psf_matrix(galsim, psf, fwhm_pixels):
    try:
        return _adaptive_matrix(galsim, psf.array, ((psf.array.shape[0] - 1) / 2.0,) * 2, fwhm_pixels / 2.355)
    except _FAILURES:
        return None


def _q_from_distortion(e1, e2):
    e = math.hypot(e1, e2)
    if not e < 1.0:
        return math.nan
    return math.sqrt((1.0 - e) / (1.0 + e))


def adaptive_q(image, *, psf_fwhm_pixels=None, prepared=None):
    """Axis ratio from GalSim HSM adaptive moments, PSF-corrected when the PSF FWHM (pixels) is given.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` or ``(H, W, C)`` image of one galaxy.
    psf_fwhm_pixels : float, optional
        PSF FWHM in pixels of this image; None, NaN or less than :data:`MIN_PSF_FWHM`
        measures without correction.
    prepared : dict, optional
        The result of :func:`prepare` for ``image`` (saves preparing it twice).

    Returns
    -------
    float
        q in (0, 1], or NaN when the galaxy cannot be measured. With a PSF, the shape is
        the re-Gaussianization (``galsim.hsm.EstimateShear``, REGAUSS) estimate against a
        Moffat (beta 3) PSF of that FWHM; if that fails, the PSF's adaptive moments are
        subtracted from the galaxy's (none when the PSF is too small for HSM to measure,
        about a pixel), and NaN is returned when that leaves a matrix that is not positive
        definite (a galaxy unresolved along its minor axis).
    """
    try:
        galsim = _galsim()
        prepared = prepare(image) if prepared is None else prepared
        sigma_guess = math.sqrt(max(prepared["mask"].sum(), 1) / math.pi) / 2.0
        centre = prepared["centre"]
        if psf_fwhm_pixels is not None and np.isfinite(psf_fwhm_pixels) and psf_fwhm_pixels >= MIN_PSF_FWHM:
            psf, psf_matrix = _psf_entry(psf_fwhm_pixels)
            result = galsim.hsm.EstimateShear(
                galsim.ImageD(np.ascontiguousarray(prepared["signal"])),
                psf,
                shear_est="REGAUSS",
                strict=False,
                hsmparams=_hsm_params(galsim),
                guess_sig_gal=max(sigma_guess, 1.0),
                guess_sig_PSF=max(float(psf_fwhm_pixels) / 2.355, 0.5),
                guess_centroid=galsim.PositionD(centre[1] + 1.0, centre[0] + 1.0),
            )
            if result.correction_status == 0 and not result.error_message:
                return _q_from_distortion(result.corrected_e1, result.corrected_e2)
            matrix = _adaptive_matrix(galsim, prepared["signal"], centre, sigma_guess)
            if matrix is None:
                return math.nan
            # A PSF too small for HSM to measure (about a pixel) is negligible: no correction.
            return _q_from_matrix(matrix if psf_matrix is None else matrix - psf_matrix)
        matrix = _adaptive_matrix(galsim, prepared["signal"], centre, sigma_guess)
        return math.nan if matrix is None else _q_from_matrix(matrix)
    except _FAILURES:
        return math.nan


def isophote_q(image, *, levels=ISOPHOTE_LEVELS, prepared=None, smooth=None):
    """Axis ratio of the outer isophotes: median over ``levels`` of the filled isophote's moments.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` or ``(H, W, C)`` image of one galaxy.
    levels : sequence of float
        Isophote levels as fractions of the galaxy's peak above the sky (the 99th percentile
        of the smoothed central object); a level is never set below 3 noise levels.
    prepared : dict, optional
        The result of :func:`prepare` for ``image``.
    smooth : float, optional
        Gaussian smoothing (pixels) before thresholding; by default ``max(0.7, size / 128)``.

    Returns
    -------
    float
        q in (0, 1], or NaN when no isophote can be measured. At each level the connected
        region above it that contains the galaxy's centre is filled (holes from dust lanes
        closed) and its uniform-weight second moments give the axes.
    """
    try:
        prepared = prepare(image) if prepared is None else prepared
        signal, mask = prepared["signal"], prepared["mask"]
        size = min(signal.shape)
        sigma = max(0.7, size / 128.0) if smooth is None else float(smooth)
        smoothed = ndimage.gaussian_filter(signal, sigma, mode="nearest")
        # Noise of the smoothed image: a Gaussian kernel of width s averages ~4 pi s^2 pixels.
        noise = prepared["noise"] / max(1.0, 2.0 * math.sqrt(math.pi) * sigma)
        peak = float(np.percentile(smoothed[mask], 99.0)) if mask.any() else 0.0
        if not peak > 3.0 * noise:
            return math.nan
        cy, cx = (int(round(c)) for c in prepared["centre"])
        ratios = []
        for level in levels:
            above = smoothed > max(level * peak, 3.0 * noise)
            labels, count = ndimage.label(above)
            chosen = labels[cy, cx] if 0 <= cy < signal.shape[0] and 0 <= cx < signal.shape[1] else 0
            if chosen == 0:
                if count == 0:
                    continue
                overlap = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
                chosen = int(np.argmax(overlap)) + 1
            region = ndimage.binary_fill_holes(labels == chosen)
            if region.sum() < 6:
                continue
            matrix = _moment_matrix(region.astype(np.float64))
            ratios.append(_q_from_matrix(matrix + np.eye(2) / 12.0))
        ratios = [r for r in ratios if np.isfinite(r)]
        return float(np.median(ratios)) if ratios else math.nan
    except _FAILURES:
        return math.nan


# -- batches --------------------------------------------------------------------------------


def _as_batch(images):
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim not in (3, 4):
        raise ValueError(f"images of shape {images.shape} are not (N, H, W) or (N, H, W, C)")
    return images


def _per_image(values, n, name):
    if values is None:
        return np.full(n, np.nan)
    values = np.broadcast_to(np.asarray(values, dtype=np.float64), (n,))
    if values.shape != (n,):
        raise ValueError(f"{name}: expected a scalar or {n} values")
    return values


def measure(images, *, psf_fwhm_pixels=None, methods=METHODS, timings=None):
    """Axis ratios of a batch of galaxies by every method.

    Parameters
    ----------
    images : array_like
        uint8 ``(N, H, W)`` or ``(N, H, W, C)`` (grayscale stored as three identical
        channels is fine; colour channels are averaged). Any polarity, any size from about
        32 px up.
    psf_fwhm_pixels : float or array_like, optional
        PSF FWHM in pixels, one for all or one per image (NaN: unknown for that image).
        Only ``adaptive`` uses it.
    methods : sequence of str
        Subset of :data:`METHODS`.
    timings : dict, optional
        If given, receives the seconds spent per method (preparation counted once, in
        ``"prepare"``).

    Returns
    -------
    dict
        ``{method: float64 array (N,)}`` of q in (0, 1]; NaN where a method cannot measure.
    """
    images = _as_batch(images)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown peer method(s) {unknown}; must be among {', '.join(METHODS)}")
    n = len(images)
    psf = _per_image(psf_fwhm_pixels, n, "psf_fwhm_pixels")
    result = {method: np.full(n, np.nan) for method in methods}
    clock = {method: 0.0 for method in ("prepare",) + tuple(methods)}
    for index in range(n):
        image = images[index]
        if "moments" in methods:
            start = time.perf_counter()
            result["moments"][index] = moments_q(image)
            clock["moments"] += time.perf_counter() - start
        others = [m for m in methods if m != "moments"]
        if not others:
            continue
        start = time.perf_counter()
        try:
            prepared = prepare(image)
        except _FAILURES:
            clock["prepare"] += time.perf_counter() - start
            continue
        clock["prepare"] += time.perf_counter() - start
        if "adaptive" in methods:
            start = time.perf_counter()
            result["adaptive"][index] = adaptive_q(image, psf_fwhm_pixels=psf[index], prepared=prepared)
            clock["adaptive"] += time.perf_counter() - start
        if "isophote" in methods:
            start = time.perf_counter()
            result["isophote"][index] = isophote_q(image, prepared=prepared)
            clock["isophote"] += time.perf_counter() - start
    if timings is not None:
        timings.update(clock)
    return result


def psf_fwhm_pixels(psf_fwhm_arcsec, d25_arcmin, raw_size, size=None, *, fov_arcsec=None):
    """PSF FWHM in pixels of a raw image (field of view 2 x D25 unless ``fov_arcsec`` is given).

    Parameters
    ----------
    psf_fwhm_arcsec : float or array_like
        PSF FWHM in arcsec (``psf_fwhm`` of a synthetic universe's truth.csv).
    d25_arcmin : float or array_like
        Major-axis diameter D25 in arcmin (the catalog's ``d25``): the pixel scale of a raw
        image is ``2 * d25 * 60 / raw_size`` arcsec.
    raw_size : int
        Side of the raw image in pixels.
    size : int, optional
        Side after a plain resize of the whole frame (default ``raw_size``). For the
        workflow's normalised images multiply the result by the normaliser's ``zoom``.
    fov_arcsec : float or array_like, optional
        The field of view when it is not 2 x D25 (truth.csv's ``fov_arcsec``); NaN entries
        fall back to 2 x D25.

    Returns
    -------
    float or numpy.ndarray
        The FWHM in pixels.
    """
    size = raw_size if size is None else size
    field = 2.0 * np.asarray(d25_arcmin, dtype=np.float64) * 60.0
    if fov_arcsec is not None:
        fov = np.asarray(fov_arcsec, dtype=np.float64)
        field = np.where(np.isfinite(fov) & (fov > 0), fov, field)
    return np.asarray(psf_fwhm_arcsec, dtype=np.float64) / (field / float(size))


# -- inclinations and calibration -----------------------------------------------------------


def peer_inclination(q, q0=DEFAULT_Q0, *, slope=1.0, intercept=0.0):
    """Inclination (deg) from axis ratios, ``slope * i(q; q0) + intercept`` clipped to 45-90; NaN stays NaN."""
    q = np.asarray(q, dtype=np.float64)
    finite = np.isfinite(q)
    inclination = np.full(q.shape, np.nan)
    inclination[finite] = inclination_from_axial_ratio(np.clip(q[finite], 0.0, 1.0), q0)
    return np.clip(intercept + slope * inclination, INCLINATION_MIN, INCLINATION_MAX)


@dataclasses.dataclass(frozen=True)
class MethodCalibration:
    """Calibration of one method: ``i = clip(slope * i(q; q0) + intercept, 45, 90)``.

    Attributes
    ----------
    q0 : float
        Intrinsic axial ratio of an edge-on disk.
    slope, intercept : float
        Linear correction of the inclination (1 and 0 when not fitted; slope > 0).
    rms, bias, mae : float
        Scores (deg) on the galaxies it was fitted on.
    n : int
        Number of galaxies used (those the method could measure).
    coverage : float
        Fraction of the given galaxies the method could measure.
    """

    q0: float = DEFAULT_Q0
    slope: float = 1.0
    intercept: float = 0.0
    rms: float = math.nan
    bias: float = math.nan
    mae: float = math.nan
    n: int = 0
    coverage: float = math.nan

    def inclination(self, q):
        """Calibrated inclinations (deg, clipped to 45-90) of axis ratios ``q``; NaN where q is NaN."""
        return peer_inclination(q, self.q0, slope=self.slope, intercept=self.intercept)


@dataclasses.dataclass(frozen=True)
class PeerCalibration:
    """Per-method calibrations fitted on labelled galaxies, and the best method among them.

    Attributes
    ----------
    methods : dict
        ``{method: MethodCalibration}``.
    best : str
        The method with the lowest RMS on the fitting galaxies (see :func:`best_peer`).
    """

    methods: dict
    best: str

    def apply(self, measurements):
        """Calibrated inclinations ``{method: array}`` of ``measurements`` (``{method: q array}``)."""
        return {
            method: self.methods[method].inclination(q) for method, q in measurements.items() if method in self.methods
        }

    def inclination(self, measurements, method=None):
        """Inclinations of ``method`` (default: :attr:`best`) from ``{method: q array}``."""
        method = self.best if method is None else method
        return self.methods[method].inclination(measurements[method])

    def as_dict(self):
        """JSON-ready form: ``{"best": name, "methods": {name: {q0, slope, ...}}}``."""
        return {"best": self.best, "methods": {name: dataclasses.asdict(cal) for name, cal in self.methods.items()}}

    @classmethod
    def from_dict(cls, data):
        """Inverse of :meth:`as_dict`."""
        return cls(
            methods={name: MethodCalibration(**values) for name, values in data["methods"].items()}, best=data["best"]
        )


def scores(predicted, truth):
    """RMS, bias (mean predicted - true) and MAE (deg) over galaxies with a finite prediction.

    Returns
    -------
    dict
        ``rms``, ``bias``, ``mae``, ``n`` (measured) and ``coverage`` (measured fraction).
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(predicted) & np.isfinite(truth)
    n_total = int(np.isfinite(truth).sum())
    if not ok.any():
        return {"rms": math.nan, "bias": math.nan, "mae": math.nan, "n": 0, "coverage": 0.0}
    error = predicted[ok] - truth[ok]
    return {
        "rms": float(np.sqrt(np.mean(error**2))),
        "bias": float(np.mean(error)),
        "mae": float(np.mean(np.abs(error))),
        "n": int(ok.sum()),
        "coverage": float(ok.sum() / max(n_total, 1)),
    }


_Q0_GRID = np.round(np.arange(0.0, 0.5001, 0.005), 3)


def fit_method(q, truth, *, linear=True):
    """Fit q0 (grid 0-0.5) and, with ``linear``, slope and intercept minimising the clipped RMS.

    Parameters
    ----------
    q : array_like
        Measured axis ratios (NaN: not measured, ignored).
    truth : array_like
        True inclinations in degrees (45-90).
    linear : bool
        Also fit ``slope`` and ``intercept`` (least squares, then kept only if they lower the RMS).

    Returns
    -------
    MethodCalibration
        Raises ``ValueError`` when fewer than 3 galaxies are measured.
    """
    q = np.asarray(q, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if q.shape != truth.shape:
        raise ValueError(f"q and truth differ in shape: {q.shape} vs {truth.shape}")
    ok = np.isfinite(q) & np.isfinite(truth)
    if ok.sum() < 3:
        raise ValueError(f"only {int(ok.sum())} measured galaxies: need at least 3 to calibrate")
    qs, ts = np.clip(q[ok], 0.0, 1.0), truth[ok]
    best = None
    for q0 in _Q0_GRID:
        raw = inclination_from_axial_ratio(qs, float(q0))
        candidates = [(1.0, 0.0)]
        if linear:
            # Fit on the galaxies whose raw value is inside the range (clipping hides the rest).
            inside = (raw > 40.0) & (raw < 90.0)
            if inside.sum() >= 3 and np.ptp(raw[inside]) > 0:
                slope, intercept = np.polyfit(raw[inside], ts[inside], 1)
                if slope > 0:
                    candidates.append((float(slope), float(intercept)))
        for slope, intercept in candidates:
            predicted = np.clip(slope * raw + intercept, INCLINATION_MIN, INCLINATION_MAX)
            rms = float(np.sqrt(np.mean((predicted - ts) ** 2)))
            if best is None or rms < best[0] - 1e-9:
                best = (rms, float(q0), slope, intercept)
    _, q0, slope, intercept = best
    calibration = MethodCalibration(q0=q0, slope=slope, intercept=intercept)
    score = scores(calibration.inclination(q), truth)
    return dataclasses.replace(
        calibration, rms=score["rms"], bias=score["bias"], mae=score["mae"], n=score["n"], coverage=score["coverage"]
    )


def fit_peer(images_or_q, truth, *, psf_fwhm_pixels=None, linear=True, min_coverage=0.9):
    """Calibrate every method on labelled galaxies, as the CNNs are trained on them.

    Parameters
    ----------
    images_or_q : array_like or dict
        Either a uint8 image batch (measured with :func:`measure`) or the
        ``{method: q array}`` it returns.
    truth : array_like
        True inclinations (deg) of the same galaxies; NaN entries are ignored.
    psf_fwhm_pixels : float or array_like, optional
        Passed to :func:`measure` when images are given.
    linear : bool
        Fit a linear inclination correction besides q0.
    min_coverage : float
        A method measuring fewer than this fraction of the galaxies cannot be the best one.

    Returns
    -------
    PeerCalibration
        Per-method calibrations; ``best`` is chosen by :func:`best_peer`'s rule.
    """
    measurements = (
        images_or_q if isinstance(images_or_q, dict) else measure(images_or_q, psf_fwhm_pixels=psf_fwhm_pixels)
    )
    fitted = {}
    for method, q in measurements.items():
        try:
            fitted[method] = fit_method(q, truth, linear=linear)
        except ValueError:
            continue
    if not fitted:
        raise ValueError("no method measured enough galaxies to calibrate the peer")
    best = best_method({m: (c.rms, c.coverage) for m, c in fitted.items()}, min_coverage)
    return PeerCalibration(methods=fitted, best=best)


def best_method(table, min_coverage=0.9):
    """The method with the lowest RMS among those with enough coverage (else among all).

    ``table`` maps method -> ``(rms, coverage)``; ties keep :data:`METHODS` order.
    """
    order = {name: index for index, name in enumerate(METHODS)}
    eligible = {m: v for m, v in table.items() if np.isfinite(v[0]) and v[1] >= min_coverage}
    if not eligible:
        eligible = {m: v for m, v in table.items() if np.isfinite(v[0])} or table
    return min(
        eligible, key=lambda m: (eligible[m][0] if np.isfinite(eligible[m][0]) else math.inf, order.get(m, len(order)))
    )


def best_peer(measurements, truth, *, calibration=None, q0=DEFAULT_Q0, min_coverage=0.9):
    """The best method on labelled galaxies, by name, and its inclinations.

    Parameters
    ----------
    measurements : dict
        ``{method: q array}`` from :func:`measure`.
    truth : array_like
        True inclinations (deg).
    calibration : PeerCalibration, optional
        Calibration fitted on *other* galaxies; without it every method uses the fixed
        ``q0`` (no fit on these galaxies, so the comparison stays honest).
    q0 : float
        The fixed intrinsic axial ratio when no calibration is given.
    min_coverage : float
        Methods measuring fewer than this fraction of the galaxies are chosen only if no
        other method qualifies.

    Returns
    -------
    tuple
        ``(method_name, inclinations)``: the name of the method with the lowest RMS against
        ``truth`` and its inclinations (deg, 45-90, NaN where unmeasured).
    """
    if calibration is not None:
        values = calibration.apply(measurements)
    else:
        values = {method: peer_inclination(q, q0) for method, q in measurements.items()}
    if not values:
        raise ValueError("no measurements to choose the peer from")
    table = {}
    for method, inclinations in values.items():
        score = scores(inclinations, truth)
        table[method] = (score["rms"], score["coverage"])
    name = best_method(table, min_coverage)
    return name, values[name]
