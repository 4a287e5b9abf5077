"""The canonical normaliser exactly as it was before its speed-up (commit 25bda18), kept as the reference.

tests/test_normalise.py checks that :func:`inclinet.normalise.normalise_image` still gives
these outputs (up to float rounding); do not edit it to make that test pass.
"""

import math
import zlib
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

SKY_LEVEL = 16.0
GALAXY_LEVEL = 240.0
#: Major-axis rms radius of the galaxy, as a fraction of the output side.
TARGET_SIGMA = 0.14
#: Stretched value of the median pixel of the galaxy region.
MEDIAN_TARGET = 0.05
#: Minimum sky noise of a normalised image, in grey levels.
NOISE_FLOOR = 2.5
#: Limits of the zoom relative to resizing the whole frame to the output side.
ZOOM_LIMITS = (0.5, 4.0)
#: Detection threshold (sky-noise sigmas of the smoothed image).
DETECTION_SIGMA = 2.5


@dataclass(frozen=True)
class NormalisationInfo:
    """What the normaliser measured on one image (used for out-of-distribution checks).

    ``polarity`` is ``dark-on-light`` or ``light-on-dark``; ``sky`` the sky level (grey
    levels, before inversion); ``noise`` the sky noise (grey levels); ``snr`` the galaxy's
    99th-percentile level over the noise; ``size_in_frame`` the major-axis rms radius over
    the input side; ``offset`` the centroid's distance from the frame centre over the side;
    ``zoom`` the applied zoom relative to a plain resize (1 = none); ``zoom_limited`` whether
    the zoom hit :data:`ZOOM_LIMITS`; ``fill_fraction`` the fraction of masked fill pixels;
    ``detected`` whether a galaxy stood out from the sky; ``median_level`` the galaxy's
    median pixel over its 99th percentile before the stretch; ``axial_ratio`` the moments'
    minor/major ratio.
    """

    polarity: str
    sky: float
    noise: float
    snr: float
    size_in_frame: float
    offset: float
    zoom: float
    zoom_limited: bool
    fill_fraction: float
    detected: bool
    median_level: float
    axial_ratio: float

    def as_dict(self):
        return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in asdict(self).items()}


def _as_rgb(image):
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image of shape {image.shape} is not (H, W), (H, W, 3) or (H, W, 4)")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[:, :, :3]
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise ValueError(f"image of shape {image.shape[:2]} is too small to normalise (at least 8 x 8 pixels)")
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image


def _fill_mask(image):
    """Solid regions of pure black or (near, JPEG-damaged) white touching the frame: rotation corners, padding.

    A 3 x 3 opening removes noise speckles of a bright sky that happen to reach white.
    """
    flat = np.all(image == 0, axis=2) | np.all(image >= 248, axis=2)
    if flat.sum() < max(16, flat.size // 1000):
        return np.zeros_like(flat)
    flat = ndimage.binary_opening(flat, structure=np.ones((3, 3), bool))
    if not flat.any():
        return flat
    labels, count = ndimage.label(flat)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge > 0]
    if not len(edge):
        return np.zeros_like(flat)
    sizes = ndimage.sum(flat, labels, index=edge)
    # A handful of saturated sky pixels on the edge are not a fill region.
    keep = edge[np.asarray(sizes) >= max(16, flat.size // 1000)]
    if not len(keep):
        return np.zeros_like(flat)
    # A black (or white) region is fill only if the sky around it is not black (or white)
    # itself: a clipped dark sky is sky.
    luminance = image.mean(axis=2)
    candidate = np.isin(labels, keep)
    border = np.zeros_like(flat)
    border[:4] = border[-4:] = True
    border[:, :4] = border[:, -4:] = True
    if (candidate & border).sum() > 0.8 * border.sum():
        return np.zeros_like(flat)  # a frame that is black (white) all round is its sky
    sky = luminance[border & ~ndimage.binary_dilation(candidate, iterations=3)]
    if sky.size < 16:
        return ndimage.binary_dilation(candidate, iterations=2)
    sky_level = float(np.median(sky))
    kept = [label for label in keep if abs(float(luminance[labels == label].mean()) - sky_level) > 4.0]
    if not kept:
        return np.zeros_like(flat)
    keep = np.asarray(kept)
    # Two more pixels: the anti-aliased or JPEG-blurred edge of the fill.
    return ndimage.binary_dilation(np.isin(labels, keep), iterations=2)


def _ring_mask(shape, valid):
    height, width = shape
    width_px = max(2, min(height, width) // 16)
    ring = np.zeros(shape, dtype=bool)
    ring[:width_px] = ring[-width_px:] = True
    ring[:, :width_px] = ring[:, -width_px:] = True
    ring &= valid
    if ring.sum() < 16:
        # Fill covers the whole border: use the valid pixels furthest from the centre.
        yy, xx = np.indices(shape)
        distance = np.hypot(yy - (height - 1) / 2, xx - (width - 1) / 2)
        distance = np.where(valid, distance, -1)
        cut = np.quantile(distance[valid], 0.8) if valid.any() else 0
        ring = valid & (distance >= cut)
    return ring


def _robust_sigma(values):
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _fit_sky_plane(plane, ring_sample, coords):
    """Least-squares plane ``a + b x + c y`` through the sampled ring pixels, one 3-sigma clipping pass."""
    yy, xx = coords
    values = plane.ravel()[ring_sample].astype(np.float64)
    design = np.stack([np.ones_like(values), xx, yy], axis=1).astype(np.float64)
    keep = np.ones(len(values), dtype=bool)
    coefficients = np.array([np.median(values), 0.0, 0.0])
    for _ in range(2):
        if keep.sum() < 8:
            break
        coefficients, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = values - design @ coefficients
        sigma = _robust_sigma(residual[keep])
        if sigma <= 0:
            break
        keep = np.abs(residual) < 3.0 * sigma
    residual = values - design @ coefficients
    return coefficients, _robust_sigma(residual[keep] if keep.sum() >= 8 else residual)


def _central_object(signal, noise, smooth_sigma):
    """Mask of the connected object at (or nearest to) the centre; None when nothing stands out."""
    smooth = ndimage.gaussian_filter(signal, smooth_sigma, mode="nearest")
    # Smoothing by a Gaussian of sigma s lowers white noise by 2 s sqrt(pi).
    smooth_noise = noise / max(1.0, 2.0 * smooth_sigma * math.sqrt(math.pi))
    mask = smooth > DETECTION_SIGMA * max(smooth_noise, 1e-3)
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    height, width = signal.shape
    centre = (height // 2, width // 2)
    chosen = labels[centre]
    if chosen == 0:
        index = np.arange(1, count + 1)
        flux = np.asarray(ndimage.sum(np.clip(smooth, 0, None), labels, index=index))
        yy, xx = np.indices(signal.shape)
        distance = np.hypot(yy - centre[0], xx - centre[1])
        nearest = np.asarray(ndimage.minimum(distance, labels, index=index))
        central = nearest <= min(height, width) / 4
        if not central.any():
            return None
        chosen = int(index[central][np.argmax(flux[central])])
    return labels == chosen


def _binned(plane, factor):
    """Mean over ``factor`` x ``factor`` blocks (the ragged edge is dropped)."""
    if factor == 1:
        return plane
    height, width = (plane.shape[0] // factor) * factor, (plane.shape[1] // factor) * factor
    return plane[:height, :width].reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))


def _moments(weights):
    total = float(weights.sum())
    yy, xx = np.indices(weights.shape, dtype=np.float64)
    x0 = float((weights * xx).sum() / total)
    y0 = float((weights * yy).sum() / total)
    dx, dy = xx - x0, yy - y0
    mxx = float((weights * dx * dx).sum() / total)
    myy = float((weights * dy * dy).sum() / total)
    mxy = float((weights * dx * dy).sum() / total)
    mean = 0.5 * (mxx + myy)
    half = math.hypot(0.5 * (mxx - myy), mxy)
    major = mean + half + 1.0 / 12.0
    minor = max(mean - half, 0.0) + 1.0 / 12.0
    return x0, y0, math.sqrt(major), math.sqrt(minor / major)


def _resample(planes, centre, window, size):
    """Crop the square ``window`` (input pixels) centred on ``centre`` from ``planes`` and resize to ``size``.

    Pixels outside the frame are sky (0): the planes are sky-subtracted already, and the
    noise floor of step 6 fills them with noise like the rest.
    """
    n_channels, height, width = planes.shape
    x0, y0 = centre
    half = window / 2.0
    left, top = x0 + 0.5 - half, y0 + 0.5 - half
    right, bottom = left + window, top + window
    pad = int(math.ceil(max(0.0, -left, -top, right - width, bottom - height))) + 2
    out = np.empty((n_channels, size, size), dtype=np.float32)
    for channel in range(n_channels):
        plane = planes[channel]
        if pad:
            plane = np.pad(plane, pad, mode="constant")
        picture = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
        box = (left + pad, top + pad, right + pad, bottom + pad)
        out[channel] = np.asarray(picture.resize((size, size), Image.LANCZOS, box=box), dtype=np.float32)
    return out


def _stretch(values, median_level):
    """Monotonic stretch taking ``median_level`` to :data:`MEDIAN_TARGET` and 1 to 1 (0 stays 0)."""
    m = float(np.clip(median_level, 1e-4, 0.999))
    if abs(m - MEDIAN_TARGET) < 1e-3:
        return values
    if m < MEDIAN_TARGET:
        # asinh(m / b) / asinh(1 / b) falls from 1 (b -> 0) to m (b -> infinity): bisect on log b.
        low, high = -12.0, 12.0
        for _ in range(50):
            middle = 0.5 * (low + high)
            beta = math.exp(middle)
            level = math.asinh(m / beta) / math.asinh(1.0 / beta)
            if level > MEDIAN_TARGET:
                low = middle
            else:
                high = middle
        beta = math.exp(0.5 * (low + high))
        return np.arcsinh(values / beta) / math.asinh(1.0 / beta)
    power = math.log(MEDIAN_TARGET) / math.log(m)
    return np.sign(values) * np.power(np.abs(values), power)


def normalise_image(image, size, *, with_info=False):
    """The canonical ``uint8 (size, size, 3)`` form of a galaxy image (see the module docstring).

    ``image`` is ``uint8`` (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha ignored), of any
    size of at least 8 x 8. With ``with_info`` returns ``(image, NormalisationInfo)``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"invalid size: {size!r}; must be an integer number of pixels >= 8")
    size = int(size)
    image = _as_rgb(image)
    gray = bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))
    height, width = image.shape[:2]
    fill = _fill_mask(image)
    valid = ~fill
    planes = np.moveaxis(image[..., :1] if gray else image, -1, 0).astype(np.float32)
    luminance = planes.mean(axis=0)
    ring = _ring_mask((height, width), valid)
    # At most ~4,000 ring pixels are enough for a level, a gradient and a noise.
    ring_sample = np.flatnonzero(ring)[:: max(1, int(ring.sum()) // 4000)]
    sky_level = float(np.median(luminance.ravel()[ring_sample])) if ring.any() else float(np.median(luminance))

    # Polarity from the central half of the frame: which way does it depart from the sky?
    box = (slice(height // 4, height - height // 4), slice(width // 4, width - width // 4))
    central = luminance[box][valid[box]]
    if central.size == 0:
        central = luminance[valid] if valid.any() else luminance.ravel()
    above = float(np.percentile(central, 99.5)) - sky_level
    below = sky_level - float(np.percentile(central, 0.5))
    dark_on_light = below > above
    if dark_on_light:
        planes = 255.0 - planes

    ys = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None]
    xs = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]
    coords = (ys[:, 0][ring_sample // width], xs[0][ring_sample % width])
    noises = []
    for channel in range(len(planes)):
        coefficients, sigma = _fit_sky_plane(planes[channel], ring_sample, coords)
        planes[channel] -= (
            np.float32(coefficients[0]) + np.float32(coefficients[1]) * xs + np.float32(coefficients[2]) * ys
        )
        noises.append(sigma)
    planes[:, fill] = 0.0
    signal = planes.mean(axis=0)
    noise = max(_robust_sigma(signal.ravel()[ring_sample]), 0.3)  # 8-bit quantisation floor

    # Detection and moments on a copy binned to at most ~128 pixels (the same answer, faster).
    factor = max(1, int(max(height, width) // 128))
    binned, binned_ring = _binned(signal, factor), _binned(ring.astype(np.float32), factor) > 0.99
    binned_noise = max(_robust_sigma(binned[binned_ring]) if binned_ring.sum() >= 16 else noise / factor, 0.3 / factor)
    mask = _central_object(binned, binned_noise, 1.0)
    plain_window = float(max(height, width))
    if mask is not None and np.clip(binned, 0, None)[mask].sum() > 0:
        bx, by, b_sigma, axial_ratio = _moments(np.where(mask, np.clip(binned, 0, None), 0.0))
        # Binned pixel k covers input pixels k*f .. k*f + f - 1.
        x0, y0 = bx * factor + (factor - 1) / 2.0, by * factor + (factor - 1) / 2.0
        sigma_major = math.sqrt(max(b_sigma**2 - 1.0 / 12.0, 0.0) * factor**2 + 1.0 / 12.0)
        window = sigma_major / TARGET_SIGMA
        detected = True
        peak = float(np.percentile(binned[mask], 99.0))
    else:
        x0, y0 = (width - 1) / 2.0, (height - 1) / 2.0
        sigma_major, axial_ratio, window, detected, peak = float("nan"), float("nan"), plain_window, False, 0.0
    # window = plain_window / zoom; keep the zoom within its limits.
    low_window, high_window = plain_window / ZOOM_LIMITS[1], plain_window / ZOOM_LIMITS[0]
    zoom_limited = not low_window <= window <= high_window
    window = float(np.clip(window, low_window, high_window))
    if not detected:
        window = plain_window
    coverage = np.concatenate([planes, valid[None].astype(np.float32)])
    out = _resample(coverage, (x0, y0), window, size)
    out, covered = out[:-1], out[-1] > 0.5

    # Photometry on the output grid.
    out_luminance = out.mean(axis=0)
    yy, xx = np.indices((size, size))
    radius = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    region = radius <= 3.0 * TARGET_SIGMA * size
    outer = covered & ~region
    out_noise = max(_robust_sigma(out_luminance[outer]) if outer.sum() >= 16 else noise, 1e-3)
    galaxy = region & (ndimage.gaussian_filter(out_luminance, 1.0) > DETECTION_SIGMA * out_noise / 3.5)
    if galaxy.sum() < 4:
        galaxy = region
    peaks = np.array([max(float(np.percentile(channel[galaxy], 99.0)), 1e-3) for channel in out])
    if gray or len(out) == 1:
        peaks[:] = max(float(np.percentile(out_luminance[galaxy], 99.0)), 1e-3)
    scaled = out / peaks[:, None, None]
    median_level = float(np.median(scaled.mean(axis=0)[galaxy]))
    stretched = _stretch(scaled, median_level)
    levels = SKY_LEVEL + (GALAXY_LEVEL - SKY_LEVEL) * stretched
    rng = np.random.default_rng(zlib.crc32(image.tobytes()) ^ (size << 20))
    sky_pixels = covered & ~region
    if not sky_pixels.any():
        sky_pixels = ~region
    channel_noise = np.array([_robust_sigma(plane[sky_pixels]) if sky_pixels.any() else 0.0 for plane in levels])
    if not covered.all():
        # Outside the source frame (or in its fill): sky with the image's own noise, not a flat frame.
        missing = ~covered
        draws = rng.normal(0.0, 1.0, size=(len(levels), int(missing.sum()))).astype(np.float32)
        if gray:
            draws = draws[:1]
        levels[:, missing] = SKY_LEVEL + draws * channel_noise[:, None]
    levels_noise = float(np.mean(channel_noise))
    if levels_noise < NOISE_FLOOR:
        extra = math.sqrt(NOISE_FLOOR**2 - levels_noise**2)
        levels = levels + rng.normal(0.0, extra, size=(1 if gray else len(levels), size, size)).astype(np.float32)
    result = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    result = np.repeat(result, 3, axis=0) if gray else result
    result = np.ascontiguousarray(np.moveaxis(result, 0, -1))
    if not with_info:
        return result
    info = NormalisationInfo(
        polarity="dark-on-light" if dark_on_light else "light-on-dark",
        sky=sky_level,
        noise=float(noise),
        snr=float(peak / binned_noise) if detected else 0.0,
        size_in_frame=float(sigma_major / plain_window) if detected else float("nan"),
        offset=float(math.hypot(x0 - (width - 1) / 2, y0 - (height - 1) / 2) / plain_window),
        zoom=float(plain_window / window),
        zoom_limited=bool(zoom_limited and detected),
        fill_fraction=float(fill.mean()),
        detected=detected,
        median_level=median_level,
        axial_ratio=float(axial_ratio),
    )
    return result, info
