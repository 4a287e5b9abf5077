"""The one canonical input normalisation: every image a model sees goes through :func:`normalise_image`.

Prep (raw file -> resized npz), augmentation (after every augmented view), evaluation and
``inclinet-predict`` all call this function, so a user's image looks like training data
whatever its origin (augmentation through :func:`normalise_batch`, the same function over a
stack of images, with the same outputs). The steps, in order:

1. **Fill masking.** Pixels at exactly 0 or 255 in every channel that form regions touching
   the frame (the corners left by rotating a cutout, padding) are not sky: they are ignored
   when measuring and replaced by sky.
2. **Polarity.** The sky level is the median of the image's outer ring; if the centre of the
   frame departs further *below* the sky than above it, the galaxy is dark on a light sky
   (the original g, r, i PNGs) and the image is inverted. Output galaxies are always bright
   on a dark sky.
3. **Sky.** A plane (level plus gradient) fitted per channel to the outer ring, with one
   3-sigma clipping pass, is subtracted; the sky noise is 1.4826 x the median absolute
   deviation of the ring's residuals.
4. **Centre and size.** The connected region standing out by more than 2.5 sigma (after a
   light smoothing) at, or nearest to, the centre is the galaxy; its flux-weighted centroid
   and second moments give its centre and its major-axis rms radius ``sigma``. The image is
   resampled (anti-aliased Lanczos, one isotropic factor, so axial ratios are kept) so the
   galaxy is centred and ``sigma`` is :data:`TARGET_SIGMA` of the output side. Inclination
   does not depend on scale, so the raw frame (2 x D25 or anything else) does not matter.
   The zoom is limited to :data:`ZOOM_LIMITS` x the plain resize of the whole frame.
5. **Stretch.** Values are divided by the 99th percentile of the galaxy region (colour: each
   channel by its own, so the colour balance of the source does not matter; gray images use
   one scale). A monotonic stretch then brings the median galaxy pixel to
   :data:`MEDIAN_TARGET`: an asinh stretch (linear near the sky, so noise is not blown up)
   when the source is less stretched than that, a power law when it is more. Isophote
   shapes, which carry the inclination, are unchanged by any monotonic stretch.
6. **Levels and noise.** The result is written as ``SKY_LEVEL + (GALAXY_LEVEL - SKY_LEVEL) x
   value``; images whose sky noise is below :data:`NOISE_FLOOR` grey levels get Gaussian
   noise up to it (seeded from the image's own bytes, so the output is deterministic and
   independent of sharding). Images less noisy than the floor all look alike; noisier
   ones keep their noise.

The output is ``uint8 (size, size, 3)``; grayscale inputs give three identical channels.
Re-normalising a normalised image changes it little (the zoom is about 1, the stretch
about the identity), which is what lets augmentation call it again after every view.
"""

import functools
import math
import zlib
from dataclasses import asdict, dataclass

import cv2
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
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise ValueError(f"image of shape {image.shape[:2]} is too small to normalise (at least 8 x 8 pixels)")
    return _as_rgb_stack(image[None])[0]


def _fill_mask(image):
    """Solid regions of pure black or (near, JPEG-damaged) white touching the frame: rotation corners, padding.

    A 3 x 3 opening removes noise speckles of a bright sky that happen to reach white.
    """
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    flat = ((red == 0) & (green == 0) & (blue == 0)) | ((red >= 248) & (green >= 248) & (blue >= 248))
    if flat.sum() < max(16, flat.size // 1000):
        return np.zeros_like(flat)
    # The opening below only removes pixels, so with no flat pixel on the frame's edge no
    # region can touch it (the common case: a galaxy's saturated core).
    if not (flat[0].any() or flat[-1].any() or flat[:, 0].any() or flat[:, -1].any()):
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


def _median(values):
    """``np.median`` of a 1-D array without NaNs (the same value, without its overhead)."""
    if values.size == 0:
        return np.nan
    return _medians(values)


def _medians(values):
    """``np.median(values, axis=-1)`` of an array without NaNs with M > 0 values per row: the same values, faster.

    One selection of the upper middle value; for an even M the lower one is the largest
    value below it. (A partition at two positions at once takes NumPy's generic path, about
    four times slower than its vectorised one.)
    """
    size = values.shape[-1]
    half = size // 2
    parted = np.partition(values, half, axis=-1)
    if size % 2:
        return parted[..., half]
    return (parted[..., :half].max(axis=-1) + parted[..., half]) / 2


def _percentile_99(values):
    """``np.percentile(values, 99.0, axis=-1)`` (linear interpolation), the same values from one partition."""
    count = values.shape[-1]
    virtual = (count - 1) * np.true_divide(99.0, 100)
    low = int(math.floor(virtual))
    if virtual >= count - 1:
        return np.partition(values, count - 1, axis=-1)[..., count - 1]
    parted = np.partition(values, low + 1, axis=-1)
    below, above = parted[..., : low + 1].max(axis=-1), parted[..., low + 1]
    weight = float(virtual - low)
    # NumPy's interpolation, from whichever neighbour is nearer.
    if weight >= 0.5:
        return above - (above - below) * (1 - weight)
    return below + (above - below) * weight


def _robust_sigma(values):
    values = np.asarray(values, dtype=np.float64).ravel()
    return float(_robust_sigma_rows(values)) if values.size else 0.0


def _masked(planes, mask):
    """``planes[:, mask]`` for planes (K, H, W) and a mask (H, W): the same values in the same order.

    NumPy's mixed slice-and-mask indexing takes a slow general path (about 15 times slower
    on a 128-px colour image); a gather by flat indices does not.
    """
    return np.take(planes.reshape(len(planes), -1), np.flatnonzero(mask), axis=1)


def _robust_sigmas(planes, where):
    """:func:`_robust_sigma` of every plane of ``planes`` (C, H, W) over the pixels ``where``, in their precision."""
    values = _masked(planes, where)
    if not values.shape[1]:
        return np.zeros(len(planes))
    return _robust_sigma_rows(values, dtype=None)


def _plane_through(x, y, values):
    """Least-squares ``(a, b, c)`` of ``a + b x + c y`` through ``values`` by the normal equations.

    With x, y in [-0.5, 0.5) the system is well conditioned, so this agrees with an SVD
    solution (``np.linalg.lstsq``) to ~1e-13, in a fraction of its time.
    """
    return _plane_through_rows(x, y, values[None], None)[0]


def _fit_sky_plane(plane, ring_sample, coords):
    """Least-squares plane ``a + b x + c y`` through the sampled ring pixels, one 3-sigma clipping pass.

    ``coords`` are the (y, x) positions of the sampled pixels (float64).
    """
    yy, xx = coords
    values = plane.ravel()[ring_sample].astype(np.float64)
    keep = np.ones(len(values), dtype=bool)
    # The level is the starting point only when there are too few pixels for a fit.
    coefficients = np.array([_median(values) if len(values) < 8 else 0.0, 0.0, 0.0])
    for _ in range(2):
        if keep.sum() < 8:
            break
        coefficients = _plane_through(xx[keep], yy[keep], values[keep])
        residual = values - (coefficients[0] + coefficients[1] * xx + coefficients[2] * yy)
        sigma = _robust_sigma(residual[keep])
        if sigma <= 0:
            break
        keep = np.abs(residual) < 3.0 * sigma
    residual = values - (coefficients[0] + coefficients[1] * xx + coefficients[2] * yy)
    return coefficients, _robust_sigma(residual[keep] if keep.sum() >= 8 else residual)


def _gaussian_kernel(sigma):
    """``scipy.ndimage.gaussian_filter``'s kernel for ``sigma`` (radius 4 sigma)."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 / (sigma * sigma) * x * x)
    return kernel / kernel.sum()


_BORDERS = {"nearest": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT}


def _smoothed(planes, sigma, mode):
    """``ndimage.gaussian_filter(plane, sigma, mode=mode)`` of every float32 plane of ``planes`` (..., H, W).

    The same values as SciPy's (each pass sums in double precision and stores single, rows
    first), from OpenCV's separable filter in a fraction of the time.
    """
    kernel, one, border = _gaussian_kernel(sigma), np.ones(1), _BORDERS[mode]
    flat = planes.reshape(-1, *planes.shape[-2:])
    out = np.empty(flat.shape, dtype=np.float32)
    # One plane at a time: faster than the planes as lines of one tall image.
    for index, plane in enumerate(flat):
        rows = cv2.sepFilter2D(plane.astype(np.float64), cv2.CV_64F, one, kernel, borderType=border)
        rows = rows.astype(np.float32).astype(np.float64)
        out[index] = cv2.sepFilter2D(rows, cv2.CV_64F, kernel, one, borderType=border)
    return out.reshape(planes.shape)


def _central_object(signal, noise, smooth_sigma):
    """Mask of the connected object at (or nearest to) the centre; None when nothing stands out."""
    smooth = _smoothed(signal, smooth_sigma, "nearest")
    # Smoothing by a Gaussian of sigma s lowers white noise by 2 s sqrt(pi).
    smooth_noise = noise / max(1.0, 2.0 * smooth_sigma * math.sqrt(math.pi))
    return _object_at_centre(smooth > DETECTION_SIGMA * max(smooth_noise, 1e-3), smooth)


def _object_at_centre(mask, smooth):
    """The connected region of ``mask`` at the centre, else the brightest (in ``smooth``) near it; None if none."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    height, width = mask.shape
    centre = (height // 2, width // 2)
    chosen = labels[centre]
    if chosen == 0:
        index = np.arange(1, count + 1)
        flux = np.asarray(ndimage.sum(np.clip(smooth, 0, None), labels, index=index))
        yy, xx = np.indices(mask.shape)
        distance = np.hypot(yy - centre[0], xx - centre[1])
        nearest = np.asarray(ndimage.minimum(distance, labels, index=index))
        central = nearest <= min(height, width) / 4
        if not central.any():
            return None
        chosen = int(index[central][np.argmax(flux[central])])
    return labels == chosen


def _binned(plane, factor):
    """Mean over ``factor`` x ``factor`` blocks of the last two axes (the ragged edge is dropped)."""
    if factor == 1:
        return plane
    height, width = (plane.shape[-2] // factor) * factor, (plane.shape[-1] // factor) * factor
    lead = plane.shape[:-2]
    blocks = plane[..., :height, :width].reshape(*lead, height // factor, factor, width // factor, factor)
    return blocks.mean(axis=(-3, -1))


def _moments(weights):
    # Sums over rows and columns first: the same moments as over the full grids, at a
    # fraction of the cost (they differ only by float rounding).
    total = float(weights.sum())
    columns, rows = weights.sum(axis=0), weights.sum(axis=1)
    xs = np.arange(weights.shape[1], dtype=np.float64)
    ys = np.arange(weights.shape[0], dtype=np.float64)
    x0 = float(columns @ xs / total)
    y0 = float(rows @ ys / total)
    dx, dy = xs - x0, ys - y0
    mxx = float(columns @ (dx * dx) / total)
    myy = float(rows @ (dy * dy) / total)
    mxy = float(dy @ (weights @ dx) / total)
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
    padded = np.zeros((n_channels, height + 2 * pad, width + 2 * pad), dtype=np.float32)
    padded[:, pad:-pad, pad:-pad] = planes
    box = (left + pad, top + pad, right + pad, bottom + pad)
    out = np.empty((n_channels, size, size), dtype=np.float32)
    for channel in range(n_channels):
        picture = Image.fromarray(padded[channel], mode="F")
        out[channel] = np.asarray(picture.resize((size, size), Image.LANCZOS, box=box), dtype=np.float32)
    return out


def _lanczos_coverage(in_size, pad, start, stop, size):
    """Pillow's Lanczos resize of a frame's coverage along one axis: the output weight inside the frame.

    For each image (arrays of N): the axis has ``in_size`` pixels and ``pad`` zero pixels on
    each side, the box is ``[start, stop)`` of the padded axis, resized to ``size`` pixels;
    returns (N, size). Pillow's coefficients (``precompute_coeffs``): Lanczos-3 widened by
    the downscaling factor, clipped to the padded axis and normalised to a sum of 1.
    """
    scale = (stop - start) / size
    filter_scale = np.maximum(scale, 1.0)
    support = 3.0 * filter_scale
    centre = start[:, None] + (np.arange(size) + 0.5) * scale[:, None]
    # C's (int) truncates towards zero, as astype does.
    first = np.maximum((centre - support[:, None] + 0.5).astype(int), 0)
    last = np.minimum((centre + support[:, None] + 0.5).astype(int), (in_size + 2 * pad)[:, None])
    taps = first[..., None] + np.arange(int(math.ceil(support.max())) * 2 + 1)
    x = (taps - centre[..., None] + 0.5) * (1.0 / filter_scale)[:, None, None]
    weights = np.where((taps < last[..., None]) & (x >= -3.0) & (x < 3.0), np.sinc(x) * np.sinc(x / 3), 0.0)
    total = weights.sum(axis=-1)
    inside = (taps >= pad[:, None, None]) & (taps < (pad + in_size)[:, None, None])
    return np.where(inside, weights, 0.0).sum(axis=-1) / np.where(total != 0.0, total, 1.0)


def _covered(shape, x0, y0, window, size):
    """``_resample`` of an all-ones plane of ``shape`` > 0.5 for each centre and window (arrays of N): (N, size, size).

    The output pixels inside the frame; the plane is separable, so two 1-D resizes give it.
    """
    height, width = shape
    half = window / 2.0
    left, top = x0 + 0.5 - half, y0 + 0.5 - half
    right, bottom = left + window, top + window
    overhang = np.max([np.zeros_like(left), -left, -top, right - width, bottom - height], axis=0)
    pad = np.ceil(overhang).astype(int) + 2
    columns = _lanczos_coverage(np.full_like(pad, width), pad, left + pad, right + pad, size).astype(np.float32)
    rows = _lanczos_coverage(np.full_like(pad, height), pad, top + pad, bottom + pad, size)
    return (rows[:, :, None] * columns[:, None, :]).astype(np.float32) > 0.5


@functools.lru_cache(maxsize=8)
def _output_grids(size):
    """The galaxy region of the output frame (within 3 target sigmas of its centre); read-only."""
    yy, xx = np.indices((size, size))
    radius = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    region = radius <= 3.0 * TARGET_SIGMA * size
    region.flags.writeable = False
    return region


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
        # asinh(x) = sign(x) log(|x| + sqrt(x^2 + 1)): NumPy's vectorised log and sqrt, four
        # times faster than its arcsinh in single precision, the same to a few units of the
        # last place (about 1e-5 of a grey level).
        scaled = np.abs(values) / beta  # a Python float keeps the values' precision (NEP 50)
        stretched = np.multiply(scaled, scaled)
        stretched += 1.0
        np.sqrt(stretched, out=stretched)
        stretched += scaled
        np.log(stretched, out=stretched)
        np.copysign(stretched, values, out=stretched)
        stretched /= math.asinh(1.0 / beta)
        return stretched
    power = math.log(MEDIAN_TARGET) / math.log(m)
    stretched = np.abs(values)
    np.power(stretched, power, out=stretched)
    stretched *= np.sign(values)
    return stretched


def _photometry(outs, covered, noise, gray, images, size):
    """Steps 5 and 6 on resampled images ``outs`` (N, C, size, size): ``uint8 (N, size, size, 3)`` and median levels.

    ``covered`` (N, size, size) marks the output pixels inside the source frame, ``noise``
    (N) is each source's sky noise (used when too little sky is covered), ``images`` the
    ``uint8`` inputs (their bytes seed the noise). ``gray``: one plane per image, C = 1.
    """
    count = len(outs)
    luminance = outs.mean(axis=1)
    region = _output_grids(size)
    sky_pixels = covered & ~region
    sky_counts = sky_pixels.sum(axis=(1, 2))
    out_noise = np.array(
        [
            max(_robust_sigma(luminance[row][sky_pixels[row]]) if sky_counts[row] >= 16 else noise[row], 1e-3)
            for row in range(count)
        ]
    )
    # Python floats compared with float32 pixels are rounded to float32 first: the same here.
    threshold = (DETECTION_SIGMA * out_noise / 3.5).astype(np.float32)
    galaxy = region & (_smoothed(luminance, 1.0, "reflect") > threshold[:, None, None])
    galaxy[galaxy.sum(axis=(1, 2)) < 4] = region
    # Single precision from here (the resampled planes are float32): every step is a
    # selection or a pointwise map, so the output levels are those of a float64 computation
    # up to rounding (a value within ~1e-5 of a half level can tip by one).
    peaks = np.empty(outs.shape[:2], dtype=np.float32)
    for row in range(count):
        if gray or outs.shape[1] == 1:
            peaks[row] = max(float(_percentile_99(luminance[row][galaxy[row]])), 1e-3)
        else:
            peaks[row] = np.maximum(_percentile_99(_masked(outs[row], galaxy[row])), np.float32(1e-3))
    levels = np.divide(outs, peaks[:, :, None, None], out=outs if outs.flags.writeable else None)
    levels = np.ascontiguousarray(levels)  # (it is: its rows' reshapes below are views)
    mean_scaled = levels.mean(axis=1)
    median_levels = [float(_median(mean_scaled[row][galaxy[row]])) for row in range(count)]
    span, sky_level = np.float32(GALAXY_LEVEL - SKY_LEVEL), np.float32(SKY_LEVEL)
    for row in range(count):
        stretched = _stretch(levels[row], median_levels[row])
        np.multiply(stretched, span, out=levels[row])
        levels[row] += sky_level
        rng = np.random.default_rng(zlib.crc32(images[row].tobytes()) ^ (size << 20))
        sky = sky_pixels[row] if sky_counts[row] else ~region
        channel_noise = _robust_sigmas(levels[row], sky)
        if not covered[row].all():
            # Outside the source frame (or in its fill): sky with the image's own noise, not a flat frame.
            missing = np.flatnonzero(~covered[row])
            draws = rng.normal(0.0, 1.0, size=(len(levels[row]), len(missing))).astype(np.float32)
            fill = sky_level + draws * channel_noise[:, None].astype(np.float32)
            levels[row].reshape(len(levels[row]), -1)[:, missing] = fill
        levels_noise = float(np.mean(channel_noise))
        if levels_noise < NOISE_FLOOR:
            extra = math.sqrt(NOISE_FLOOR**2 - levels_noise**2)
            levels[row] += rng.normal(0.0, extra, size=(len(levels[row]), size, size)).astype(np.float32)
    np.rint(levels, out=levels)
    np.clip(levels, 0, 255, out=levels)
    result = np.empty((count, size, size, 3), dtype=np.uint8)
    # Channels last; a gray image's one plane goes to all three.
    result[...] = np.moveaxis(levels, 1, -1)
    return result, median_levels


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
    sky_level = float(_median(luminance.ravel()[ring_sample])) if ring.any() else float(np.median(luminance))

    # Polarity from the central half of the frame: which way does it depart from the sky?
    box = (slice(height // 4, height - height // 4), slice(width // 4, width - width // 4))
    central = luminance[box][valid[box]]
    if central.size == 0:
        central = luminance[valid] if valid.any() else luminance.ravel()
    low, high = np.percentile(central, (0.5, 99.5))
    above = float(high) - sky_level
    below = sky_level - float(low)
    dark_on_light = below > above
    if dark_on_light:
        planes = 255.0 - planes

    ys = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None]
    xs = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]
    coords = (ys[:, 0][ring_sample // width].astype(np.float64), xs[0][ring_sample % width].astype(np.float64))
    noises = []
    for channel in range(len(planes)):
        coefficients, sigma = _fit_sky_plane(planes[channel], ring_sample, coords)
        planes[channel] -= (
            np.float32(coefficients[0]) + np.float32(coefficients[1]) * xs + np.float32(coefficients[2]) * ys
        )
        noises.append(sigma)
    if fill.any():
        planes[:, fill] = 0.0
    signal = planes.mean(axis=0)
    noise = max(_robust_sigma(signal.ravel()[ring_sample]), 0.3)  # 8-bit quantisation floor

    # Detection and moments on a copy binned to at most ~128 pixels (the same answer, faster).
    factor = max(1, int(max(height, width) // 128))
    binned, binned_ring = _binned(signal, factor), _binned(ring.astype(np.float32), factor) > 0.99
    binned_noise = max(_robust_sigma(binned[binned_ring]) if binned_ring.sum() >= 16 else noise / factor, 0.3 / factor)
    mask = _central_object(binned, binned_noise, 1.0)
    plain_window = float(max(height, width))
    positive = np.clip(binned, 0, None)
    if mask is not None and positive[mask].sum() > 0:
        bx, by, b_sigma, axial_ratio = _moments(np.where(mask, positive, 0.0))
        # Binned pixel k covers input pixels k*f .. k*f + f - 1.
        x0, y0 = bx * factor + (factor - 1) / 2.0, by * factor + (factor - 1) / 2.0
        sigma_major = math.sqrt(max(b_sigma**2 - 1.0 / 12.0, 0.0) * factor**2 + 1.0 / 12.0)
        window = sigma_major / TARGET_SIGMA
        detected = True
        peak = float(_percentile_99(binned[mask]))
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

    result, (median_level,) = _photometry(out[None], covered[None], [noise], gray, image[None], size)
    result = result[0]
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


#: At most this many images are normalised together by :func:`normalise_batch` ...
BATCH_CHUNK = 64
#: ... and at most this many pixels (input or output side, whichever is larger): with the
#: float64 photometry about 60 MB of working memory, whatever the image size.
BATCH_PIXELS = 1 << 20
# Connectivity of ndimage.label within each image of a stack, never across images.
_STACK_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STACK_STRUCTURE[1] = ndimage.generate_binary_structure(2, 1)


def _robust_sigma_rows(values, dtype=np.float64):
    """:func:`_robust_sigma` of every row of ``values`` (..., M) as float64, computed in ``dtype`` (None: theirs)."""
    values = np.asarray(values, dtype=dtype)
    return 1.4826 * _medians(np.abs(values - _medians(values)[..., None])).astype(np.float64)


def _fit_sky_planes(planes, ring_sample, coords):
    """The coefficients of :func:`_fit_sky_plane` for every plane of ``planes`` (K, H, W) at once, (K, 3)."""
    yy, xx = coords
    values = np.take(planes.reshape(len(planes), -1), ring_sample, axis=1).astype(np.float64)
    # First pass: every sampled pixel, so one normal matrix for all planes.
    coefficients = _plane_through_rows(xx, yy, values, None)
    residual = values - (coefficients[:, :1] + coefficients[:, 1:2] * xx + coefficients[:, 2:] * yy)
    sigma = _robust_sigma_rows(residual)
    keep = np.abs(residual) < 3.0 * sigma[:, None]
    # Second pass on the unclipped pixels, where the first pass measured a noise and kept at least 8.
    refit = (sigma > 0) & (keep.sum(axis=1) >= 8)
    if refit.any():
        coefficients[refit] = _plane_through_rows(xx, yy, values[refit], keep[refit])
    return coefficients


def _plane_through_rows(x, y, values, keep):
    """:func:`_plane_through` of every row of ``values`` (K, M) over the pixels ``keep`` (K, M; None: all)."""
    if keep is None:
        sx, sy, sxy = x.sum(), y.sum(), (x * y).sum()
        normal = np.array([[values.shape[1], sx, sy], [sx, (x * x).sum(), sxy], [sy, sxy, (y * y).sum()]])
        rhs = np.stack([values.sum(axis=1), (x * values).sum(axis=1), (y * values).sum(axis=1)], axis=1)
        return np.linalg.solve(normal, rhs.T).T
    # The weighted sums of 1, x, y and their products, as sums of products (no BLAS).
    basis = np.stack([np.ones_like(x), x, y])
    weights = keep.astype(np.float64)
    normal = np.einsum("km,jm->kj", weights, (basis[:, None] * basis[None]).reshape(9, -1)).reshape(-1, 3, 3)
    rhs = np.einsum("km,jm->kj", weights * values, basis)
    return np.linalg.solve(normal, rhs[..., None])[..., 0]


def _as_rgb_stack(images):
    """:func:`_as_rgb` of every image of a stack (N, H, W[, C])."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3, 4):
        raise ValueError(f"images of shape {images.shape} are not (N, H, W), (N, H, W, 3) or (N, H, W, 4)")
    if images.shape[3] == 1:
        images = np.repeat(images, 3, axis=3)
    images = images[..., :3]
    if images.shape[1] < 8 or images.shape[2] < 8:
        raise ValueError(f"images of shape {images.shape[1:3]} are too small to normalise (at least 8 x 8 pixels)")
    if images.dtype != np.uint8:
        images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    return images


def _may_have_fill(images):
    """The images of a stack (N, H, W, 3) for which :func:`_fill_mask` looks further than its first two checks."""

    def flat(pixels):
        red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
        return ((red == 0) & (green == 0) & (blue == 0)) | ((red >= 248) & (green >= 248) & (blue >= 248))

    # A flat pixel on the frame's edge first (cheap), then enough flat pixels.
    edges = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
    candidates = np.flatnonzero(flat(edges).any(axis=1))
    result = np.zeros(len(images), dtype=bool)
    if len(candidates):
        counts = flat(images[candidates]).sum(axis=(1, 2))
        result[candidates] = counts >= max(16, images.shape[1] * images.shape[2] // 1000)
    return result


def _normalise_group(images, size, gray):
    """:func:`normalise_image` of images (N, H, W, 3) without fill regions, all gray or all colour.

    Returns ``(uint8 (N, size, size, 3), done)``; the rows not ``done`` (nothing at the
    centre stands out) are left to :func:`normalise_image`.
    """
    count, height, width = images.shape[:3]
    planes = np.ascontiguousarray(np.moveaxis(images[..., :1] if gray else images, -1, 1), dtype=np.float32)
    n_channels = planes.shape[1]
    luminance = planes.mean(axis=1)
    ring = _ring_mask((height, width), np.ones((height, width), dtype=bool))
    ring_sample = np.flatnonzero(ring)[:: max(1, int(ring.sum()) // 4000)]
    sky_level = _medians(np.take(luminance.reshape(count, -1), ring_sample, axis=1)).astype(np.float64)

    box = (slice(None), slice(height // 4, height - height // 4), slice(width // 4, width - width // 4))
    low, high = np.percentile(luminance[box].reshape(count, -1), (0.5, 99.5), axis=1).astype(np.float64)
    dark_on_light = sky_level - low > high - sky_level
    np.subtract(255.0, planes, out=planes, where=dark_on_light[:, None, None, None])

    ys = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None]
    xs = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]
    coords = (ys[:, 0][ring_sample // width].astype(np.float64), xs[0][ring_sample % width].astype(np.float64))
    fits = _fit_sky_planes(planes.reshape(-1, height, width), ring_sample, coords)
    fits = fits.astype(np.float32).reshape(count, n_channels, 3, 1, 1)
    planes -= fits[:, :, 0] + fits[:, :, 1] * xs + fits[:, :, 2] * ys
    signal = planes.mean(axis=1)
    noise = np.maximum(_robust_sigma_rows(np.take(signal.reshape(count, -1), ring_sample, axis=1)), 0.3)

    factor = max(1, int(max(height, width) // 128))
    binned, binned_ring = _binned(signal, factor), _binned(ring.astype(np.float32), factor) > 0.99
    if factor == 1 and len(ring_sample) == ring.sum():
        binned_noise = noise  # the same pixels
    elif binned_ring.sum() >= 16:
        binned_noise = _robust_sigma_rows(_masked(binned, binned_ring))
    else:
        binned_noise = noise / factor
    binned_noise = np.maximum(binned_noise, 0.3 / factor)
    # _central_object on every image (smoothing sigma 1), the object at the centre only.
    smooth = _smoothed(binned, 1.0, "nearest")
    smooth_noise = binned_noise / max(1.0, 2.0 * math.sqrt(math.pi))
    # Python floats compared with float32 pixels are rounded to float32 first: the same here.
    threshold = (DETECTION_SIGMA * np.maximum(smooth_noise, 1e-3)).astype(np.float32)
    detected = smooth > threshold[:, None, None]
    labels, _ = ndimage.label(detected, structure=_STACK_STRUCTURE)
    chosen = labels[:, binned.shape[1] // 2, binned.shape[2] // 2]
    objects = labels == chosen[:, None, None]
    found = chosen > 0
    for row in np.flatnonzero(~found):
        mask = _object_at_centre(detected[row], smooth[row])
        if mask is not None:
            objects[row], found[row] = mask, True
    weights = np.where(objects, np.clip(binned, 0, None), 0.0)
    # Float32 sums, as _moments takes them.
    total = weights.sum(axis=(1, 2)).astype(np.float64)
    done = found & (total > 0)
    total = np.where(done, total, 1.0)
    columns, rows = weights.sum(axis=1), weights.sum(axis=2)
    bxs = np.arange(binned.shape[2], dtype=np.float64)
    bys = np.arange(binned.shape[1], dtype=np.float64)
    bx, by = columns @ bxs / total, rows @ bys / total
    dx, dy = bxs - bx[:, None], bys - by[:, None]
    mxx = np.einsum("ij,ij->i", columns, dx * dx) / total
    myy = np.einsum("ij,ij->i", rows, dy * dy) / total
    mxy = np.einsum("ij,ij->i", dy, np.matmul(weights, dx[:, :, None])[:, :, 0]) / total
    mean = 0.5 * (mxx + myy)
    half = np.hypot(0.5 * (mxx - myy), mxy)
    b_sigma = np.sqrt(mean + half + 1.0 / 12.0)
    x0, y0 = bx * factor + (factor - 1) / 2.0, by * factor + (factor - 1) / 2.0
    sigma_major = np.sqrt(np.maximum(b_sigma**2 - 1.0 / 12.0, 0.0) * factor**2 + 1.0 / 12.0)
    plain_window = float(max(height, width))
    window = np.clip(sigma_major / TARGET_SIGMA, plain_window / ZOOM_LIMITS[1], plain_window / ZOOM_LIMITS[0])

    resampled = np.zeros((count, n_channels, size, size), dtype=np.float32)
    covered = np.zeros((count, size, size), dtype=bool)
    for row in np.flatnonzero(done):
        resampled[row] = _resample(planes[row], (x0[row], y0[row]), window[row], size)
    if done.any():
        covered[done] = _covered((height, width), x0[done], y0[done], window[done], size)
    outputs = np.zeros((count, size, size, 3), dtype=np.uint8)
    if done.any():
        outputs[done] = _photometry(resampled[done], covered[done], noise[done], gray, images[done], size)[0]
    return outputs, done


def normalise_batch(images, size):
    """:func:`normalise_image` of every image of a stack ``(N, H, W[, C])``: ``uint8 (N, size, size, 3)``.

    The same computation, with the measurements on pixel sets common to all images
    (polarity, sky planes, noise, detection, moments, frame coverage, smoothing) made for a
    chunk of images at once (:data:`BATCH_CHUNK` images, :data:`BATCH_PIXELS` pixels); the
    resize and the photometry on each image's own pixel selection stay per image. Images
    with fill regions, or in which nothing stands out at the centre, go through
    :func:`normalise_image` one by one. The outputs are :func:`normalise_image`'s (bit for bit
    on the test inputs; the batched sums round differently, which can at most tip a value by
    one grey level).
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"invalid size: {size!r}; must be an integer number of pixels >= 8")
    size = int(size)
    images = _as_rgb_stack(images)
    result = np.empty((len(images), size, size, 3), dtype=np.uint8)
    step = max(1, min(BATCH_CHUNK, BATCH_PIXELS // max(images.shape[1] * images.shape[2], size * size)))
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        gray = (chunk[..., 0] == chunk[..., 1]).all(axis=(1, 2)) & (chunk[..., 0] == chunk[..., 2]).all(axis=(1, 2))
        alone = _may_have_fill(chunk)
        for row in np.flatnonzero(alone):
            alone[row] = _fill_mask(chunk[row]).any()
        for group_gray in (True, False):
            rows = np.flatnonzero((gray == group_gray) & ~alone)
            if len(rows):
                outputs, done = _normalise_group(chunk[rows], size, group_gray)
                result[start + rows[done]] = outputs[done]
                alone[rows[~done]] = True
        for row in np.flatnonzero(alone):
            result[start + row] = normalise_image(chunk[row], size)
    return result


def normalise_file_image(image, size, path, *, with_info=False):
    """:func:`normalise_image` of an image read from ``path``: too small an image is an InputError naming the file."""
    if min(image.shape[:2]) < 8:
        from inclinet.errors import InputError

        raise InputError(
            f"{path}: image of {image.shape[1]} x {image.shape[0]} pixels is too small; at least 8 x 8 are needed"
        )
    return normalise_image(image, size, with_info=with_info)


def load_normalised(path, size, *, with_info=False):
    """Read an image file (:func:`inclinet.images.load_image`) and normalise it to ``size`` pixels."""
    from inclinet.images import load_image

    return normalise_file_image(load_image(path), size, path, with_info=with_info)


#: Statistics of a normalised image compared with the training distribution by predict.
STATISTICS = ("sky_noise", "galaxy_area", "concentration", "asymmetry", "edge_flux")


def image_statistics(images):
    """Statistics of normalised images ``uint8 (N, S, S, 3)`` as ``float64 (N, len(STATISTICS))``.

    ``sky_noise``: robust sky noise outside the galaxy region (grey levels); ``galaxy_area``:
    fraction of the frame more than 5 noise levels above the sky; ``concentration``: flux
    within 1 target sigma of the centre over flux within 3; ``asymmetry``: the rotational
    (180 deg) asymmetry of the central region, ``sum |I - I_180| / (2 sum |I|)``;
    ``edge_flux``: flux in the outer ring over the total (stars and companions near the
    edge, or a galaxy that does not fit the frame).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    size = images.shape[1]
    yy, xx = np.indices((size, size))
    radius = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    sigma = TARGET_SIGMA * size
    inner, middle, outer = radius <= sigma, radius <= 3 * sigma, radius > 0.45 * size
    out = np.empty((len(images), len(STATISTICS)))
    for index, image in enumerate(images):
        plane = image.astype(np.float64).mean(axis=2) - SKY_LEVEL
        noise = max(_robust_sigma(plane[~middle]), 0.5)
        positive = np.clip(plane, 0, None)
        total = max(float(positive.sum()), 1e-6)
        central = np.where(middle, plane, 0.0)
        asymmetry = float(np.abs(central - central[::-1, ::-1]).sum() / max(2 * np.abs(central).sum(), 1e-6))
        out[index] = (
            noise,
            float((plane > 5 * noise).mean()),
            float(positive[inner].sum() / max(positive[middle].sum(), 1e-6)),
            asymmetry,
            float(positive[outer].sum() / total),
        )
    return out
