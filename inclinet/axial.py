"""Axial ratio of a galaxy from image moments, and the classical (Hubble) inclination formula.

The axial ratio is measured on the central object only: the background level and noise are
estimated from the image border, pixels that stand out from it by more than a few noise
levels form objects, and the connected object at (or nearest to) the centre is the galaxy.
Its second moments, weighted by the pixels' difference from the background, give the
major and minor axes. This works for dark galaxies on white (the g, r, i PNGs) and bright
galaxies on a dark sky (the colour JPEGs) alike.
"""

import numpy as np
from scipy import ndimage

from inclinet.errors import InputError


def _gray(image):
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[:, :, :3].astype(np.float64).mean(axis=2)
    elif image.ndim == 2:
        image = image.astype(np.float64)
    else:
        raise ValueError(f"image of shape {image.shape} is not (H, W) or (H, W, C)")
    if image.shape[0] < 4 or image.shape[1] < 4:
        raise ValueError(f"image of shape {image.shape} is too small to measure")
    return image


def _border(image):
    height, width = image.shape
    strip = max(1, min(height, width) // 16)
    return np.concatenate(
        [
            image[:strip].ravel(),
            image[-strip:].ravel(),
            image[strip:-strip, :strip].ravel(),
            image[strip:-strip, -strip:].ravel(),
        ]
    )


def _towards_galaxy(values, background, polarity):
    """Difference from the background in the galaxy's direction, clipped at 0 (both ways if unknown)."""
    if polarity == 0:
        return np.abs(values - background)
    return np.clip((values - background) * polarity, 0, None)


def segment(image, *, background=None, n_sigma=3.0):
    """Background, noise, polarity and the connected objects of ``image``, with the central one chosen.

    Parameters
    ----------
    image : array_like
        uint8 (or float) ``(H, W)`` or ``(H, W, C)`` image; colour is averaged over channels.
    background : float, optional
        Background level; by default the median of the image border.
    n_sigma : float, optional
        Detection threshold, in noise levels of the 3x3-smoothed image.

    Returns
    -------
    dict
        ``gray`` (float image), ``background``, ``noise`` (per pixel, at least half a grey
        level), ``polarity`` (+1 bright galaxy on a dark sky, -1 dark on white, 0 unknown),
        ``labels`` (int image of the detected objects, 0 for sky) and ``chosen`` (label of
        the central object).

    Raises
    ------
    InputError
        When no object stands out from the background.
    ValueError
        When the image has the wrong shape or is smaller than 4 x 4 pixels.
    """
    gray = _gray(image)
    border = _border(gray)
    if background is None:
        background = float(np.median(border))
    noise = 1.4826 * float(np.median(np.abs(border - np.median(border))))
    # 8-bit quantisation: even a noise-free image has half a grey level of uncertainty.
    noise = max(noise, 0.5)

    height, width = gray.shape
    centre_box = gray[height // 4 : height - height // 4, width // 4 : width - width // 4]
    polarity = np.sign(float(np.mean(centre_box)) - background)
    smooth = ndimage.uniform_filter(gray, size=3, mode="nearest")
    signal = _towards_galaxy(smooth, background, polarity)
    # The 3x3 mean lowers the noise by a factor 3.
    mask = signal > n_sigma * noise / 3.0
    labels, count = ndimage.label(mask)
    if count == 0:
        raise InputError("no object stands out from the background: cannot measure an axial ratio")
    centre = (height // 2, width // 2)
    chosen = labels[centre]
    if chosen == 0:
        flux = ndimage.sum(signal, labels, index=np.arange(1, count + 1))
        yy, xx = np.indices(gray.shape)
        distance = np.hypot(yy - centre[0], xx - centre[1])
        nearest = ndimage.minimum(distance, labels, index=np.arange(1, count + 1))
        # Prefer objects reaching into the central region, then the brightest of them.
        score = np.where(np.asarray(nearest) <= min(height, width) / 4, np.asarray(flux), -np.asarray(nearest))
        chosen = int(np.argmax(score)) + 1
    return {
        "gray": gray,
        "background": float(background),
        "noise": noise,
        "polarity": float(polarity),
        "labels": labels,
        "chosen": int(chosen),
    }


def galaxy_mask(image, *, background=None, n_sigma=3.0):
    """Boolean mask and weights of the central object of ``image``.

    Returns ``(mask, weights)`` where ``weights`` is the non-negative difference from the
    background in the galaxy's direction (darker on a bright sky, brighter on a dark one).
    Raises :class:`InputError` when no object stands out from the background.
    """
    found = segment(image, background=background, n_sigma=n_sigma)
    mask = found["labels"] == found["chosen"]
    weights = np.where(mask, _towards_galaxy(found["gray"], found["background"], found["polarity"]), 0.0)
    return mask, weights


def axial_ratio(image, *, background=None):
    """Minor-to-major axis ratio q in (0, 1] of the central galaxy of ``image``.

    ``image`` is uint8 (H, W) or (H, W, 3); ``background`` overrides the border-median
    background level. Raises :class:`InputError` when no galaxy can be found.
    """
    _, weights = galaxy_mask(image, background=background)
    total = weights.sum()
    if total <= 0:
        raise InputError("no object stands out from the background: cannot measure an axial ratio")
    yy, xx = np.indices(weights.shape, dtype=np.float64)
    x0 = (weights * xx).sum() / total
    y0 = (weights * yy).sum() / total
    dx = xx - x0
    dy = yy - y0
    mxx = (weights * dx * dx).sum() / total
    myy = (weights * dy * dy).sum() / total
    mxy = (weights * dx * dy).sum() / total
    # Eigenvalues of the 2x2 moment matrix; a pixel's own size sets a floor of 1/12.
    mean = 0.5 * (mxx + myy)
    half_diff = np.hypot(0.5 * (mxx - myy), mxy)
    major = mean + half_diff + 1.0 / 12.0
    minor = max(mean - half_diff, 0.0) + 1.0 / 12.0
    return float(min(1.0, np.sqrt(minor / major)))


def inclination_from_axial_ratio(q, q0=0.2):
    """Inclination in degrees from the axial ratio: cos^2 i = (q^2 - q0^2) / (1 - q0^2).

    ``q0`` is the intrinsic thickness of an edge-on disk. q <= q0 gives 90, q >= 1 gives 0.
    Accepts scalars (returns a float) or arrays.
    """
    if not 0.0 <= q0 < 1.0:
        raise ValueError(f"invalid q0: {q0!r}; must be in [0, 1)")
    q = np.asarray(q, dtype=np.float64)
    cos2 = np.clip((q * q - q0 * q0) / (1.0 - q0 * q0), 0.0, 1.0)
    inclination = np.degrees(np.arccos(np.sqrt(cos2)))
    return float(inclination) if inclination.ndim == 0 else inclination


def classical_inclination(image, q0=0.2):
    """Inclination (degrees) of the central galaxy of ``image`` from its measured axial ratio."""
    return inclination_from_axial_ratio(axial_ratio(image), q0)
