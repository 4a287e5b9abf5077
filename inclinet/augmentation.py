"""Aspect-preserving augmentation chains for grayscale and colour galaxy images.

The chains follow the original IncliNET augmenter with two documented fixes: the affine
step uses ONE isotropic scale factor (independent x/y scaling changes the apparent axial
ratio and so the inclination label), and colour images get the colour chain (the original
sent them through the gray one). Geometry: rotation by any angle, flips, shifts and one
scale, with the uncovered border filled with the image's own background and sky noise
(measured on its outer ring), so no white or random-valued frames appear. Photometry:
gamma, contrast, brightness offset, Gaussian noise, blur and (colour only) partial
desaturation. Geometry is applied first, then photometry (a fixed order, where the
original drew a random order per image). Every augmented image then goes through the
canonical normalisation (:func:`inclinet.normalise.normalise_image`), exactly as prep and
predict do, so what the models train on is what they are later shown. The normalisation
unifies polarity (galaxies bright on a dark sky), so the original's inversion of half the
gray images is gone: it would be undone.

All functions take a ``numpy.random.Generator`` and draw from it in a fixed order, so a
batch is reproducible from its seed. Images are ``uint8 (N, S, S, 3)``; grayscale images
keep 3 identical channels.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inclinet.normalise import normalise_image

COLOUR_CODE = "c"


@dataclass(frozen=True)
class ChainParameters:
    """Ranges of one augmentation chain (probabilities in [0, 1], pixel values on 0..255)."""

    rotation_degrees: float = 360.0
    flip_probability: float = 0.5
    max_shift: float = 0.15  # fraction of the image side, per axis
    scale_range: tuple = (0.8, 1.2)  # one factor for both axes
    gamma_range: tuple = (0.97, 1.03)
    contrast_range: tuple = (1.0, 1.0)  # multiplicative factor
    offset_range: tuple = (0, 0)  # integer brightness offset
    noise_max: float = 0.0  # Gaussian noise sigma drawn from U[0, noise_max]
    blur_probability: float = 0.0
    blur_sigma_max: float = 0.0  # pixels
    per_channel_probability: float = 0.0  # colour: draw contrast/offset/noise per channel
    desaturate_probability: float = 0.0  # colour: blend towards gray with alpha ~ U[0, 1]
    full_gray_probability: float = 0.0  # colour: turn fully gray (validation/test views)


GRAY_CHAIN = ChainParameters(noise_max=2.0, blur_probability=0.3, blur_sigma_max=0.5)
COLOUR_CHAIN = ChainParameters(
    contrast_range=(0.8, 1.2),
    offset_range=(-5, 5),
    noise_max=3.0,
    blur_probability=0.5,
    blur_sigma_max=0.5,
    per_channel_probability=0.5,
    desaturate_probability=0.1,
)
# Validation and test-time colour views: as in the original, half become fully gray.


def _ring(image):
    image = np.asarray(image)
    tail = image.shape[2:]
    return np.concatenate([image[:2].reshape(-1, *tail), image[-2:].reshape(-1, *tail),
                           image[2:-2, :2].reshape(-1, *tail), image[2:-2, -2:].reshape(-1, *tail)])


def background(image):
    """Per-channel background level: the median of the image's outer 2-pixel ring."""
    return np.median(_ring(image), axis=0)


def background_noise(image):
    """Per-channel sky noise: 1.4826 x the median absolute deviation of the outer ring."""
    ring = _ring(image).astype(np.float64)
    return 1.4826 * np.median(np.abs(ring - np.median(ring, axis=0)), axis=0)


def warp(planes, matrix, offset, rng):
    """Resample float planes ``(C, S, S)`` through the inverse affine map ``matrix``, ``offset``.

    ``input = matrix @ output + offset`` (row, column). Pixels the map brings in from
    outside the frame get each plane's background plus Gaussian noise of its measured sky
    noise, so the sky stays statistically uniform (a flat border would look like a frame
    and would bias background/noise estimates such as :func:`inclinet.axial.axial_ratio`).
    """
    planes = np.asarray(planes, dtype=np.float32)
    fills = [float(background(plane)) for plane in planes]
    noises = np.array([float(background_noise(plane)) for plane in planes])
    out = np.stack([_warp(plane, matrix, offset, fill) for plane, fill in zip(planes, fills)])
    if noises.any():
        where = _outside(planes.shape[-2:], matrix, offset)
        if where.any():
            out[:, where] += rng.normal(0.0, 1.0, size=(len(planes), int(where.sum()))) * noises[:, None]
    return out


def _affine_matrix(size, rng, params):
    """Inverse (output -> input) matrix and offset of flip + rotation + one scale + shift."""
    flip_rows = -1.0 if rng.random() < params.flip_probability else 1.0
    flip_cols = -1.0 if rng.random() < params.flip_probability else 1.0
    angle = np.deg2rad(rng.uniform(0.0, params.rotation_degrees))
    scale = rng.uniform(*params.scale_range)
    shift = rng.uniform(-params.max_shift, params.max_shift, size=2) * size
    cos, sin = np.cos(angle), np.sin(angle)
    rotation_inverse = np.array([[cos, sin], [-sin, cos]])
    matrix = np.diag([flip_rows, flip_cols]) @ rotation_inverse / scale
    centre = np.full(2, (size - 1) / 2.0)
    offset = centre - matrix @ (centre + shift)
    return matrix, offset


def _outside(shape, matrix, offset):
    """Output pixels whose source lies outside the input frame (scipy's ``constant`` mode fills them)."""
    grid = np.indices(shape, dtype=np.float64).reshape(2, -1)
    source = np.asarray(matrix) @ grid + np.asarray(offset)[:, None]
    limits = np.array(shape, dtype=np.float64)[:, None] - 1.0
    return ((source < 0) | (source > limits)).any(axis=0).reshape(shape)


def _warp(plane, matrix, offset, fill):
    return ndimage.affine_transform(plane, matrix, offset=offset, order=1, mode="constant", cval=float(fill),
                                    prefilter=False)


def _gamma(values, gamma):
    return 255.0 * np.power(np.clip(values, 0.0, 255.0) / 255.0, gamma)


def _augment_plane_stack(planes, rng, params, colour):
    """Augment one image given as float planes (C, S, S); returns the new planes."""
    matrix, offset = _affine_matrix(planes.shape[-1], rng, params)
    planes = warp(planes, matrix, offset, rng)

    n_channels = planes.shape[0]
    per_channel = colour and rng.random() < params.per_channel_probability
    draws = n_channels if per_channel else 1
    gamma = rng.uniform(*params.gamma_range)
    contrast = rng.uniform(*params.contrast_range, size=draws)
    low, high = params.offset_range
    offsets = rng.integers(low, high + 1, size=draws).astype(float)
    noise_sigma = rng.uniform(0.0, params.noise_max) if params.noise_max > 0 else 0.0
    blur_sigma = rng.uniform(0.0, params.blur_sigma_max) if rng.random() < params.blur_probability else 0.0
    desaturate = rng.uniform(0.0, 1.0) if colour and rng.random() < params.desaturate_probability else 0.0
    if colour and rng.random() < params.full_gray_probability:
        desaturate = 1.0

    if blur_sigma > 0:
        planes = ndimage.gaussian_filter(planes, sigma=(0.0, blur_sigma, blur_sigma))
    planes = _gamma(planes, gamma)
    planes = planes * contrast[:, None, None] + offsets[:, None, None]
    if noise_sigma > 0:
        noise_shape = planes.shape if per_channel else planes.shape[1:]
        planes = planes + rng.normal(0.0, noise_sigma, size=noise_shape)
    if desaturate > 0:
        gray = planes.mean(axis=0, keepdims=True)
        planes = (1.0 - desaturate) * planes + desaturate * gray
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8)


def _check_images(images):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must have shape (N, S, S, 3), got {images.shape}")
    return images


def augment_gray(images, rng, *, params=GRAY_CHAIN):
    """Augment grayscale images ``uint8 (N, S, S, 3)`` (channel 0 is used); 3 identical channels out."""
    images = _check_images(images)
    out = np.empty_like(images, dtype=np.uint8)
    for index, image in enumerate(images):
        plane = _augment_plane_stack(image[np.newaxis, :, :, 0].astype(np.float32), rng, params, colour=False)[0]
        out[index] = plane[:, :, np.newaxis]
    return out


def augment_colour(images, rng, *, params=COLOUR_CHAIN):
    """Augment colour images ``uint8 (N, S, S, 3)`` with the colour chain."""
    images = _check_images(images)
    out = np.empty_like(images, dtype=np.uint8)
    for index, image in enumerate(images):
        planes = np.moveaxis(image.astype(np.float32), -1, 0)
        out[index] = np.moveaxis(_augment_plane_stack(planes, rng, params, colour=True), 0, -1)
    return out


def augment_batch(images, filters, rng, *, colour_params=COLOUR_CHAIN, gray_params=GRAY_CHAIN, out=None):
    """Augment a mixed batch: rows whose filter is ``c`` get the colour chain, the others the gray one.

    ``filters`` holds one code per row (``c``, ``g``, ``r``, ``i``; str or bytes). Each
    augmented row is normalised again (:func:`inclinet.normalise.normalise_image`). Rows
    are processed in order, so the result depends only on the generator's state. ``out``
    (may be ``images`` itself) receives the result instead of a new array, which halves the
    memory of large batches.
    """
    images = _check_images(images)
    codes = [f.decode() if isinstance(f, bytes) else str(f) for f in np.asarray(filters).reshape(-1)]
    if len(codes) != len(images):
        raise ValueError(f"{len(codes)} filter codes for {len(images)} images")
    if out is None:
        out = np.empty_like(images, dtype=np.uint8)
    elif out.shape != images.shape or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {images.shape}, got {out.dtype} {out.shape}")
    size = images.shape[1]
    for index, (image, code) in enumerate(zip(images, codes)):
        if code == COLOUR_CODE:
            augmented = augment_colour(image[np.newaxis], rng, params=colour_params)[0]
        else:
            augmented = augment_gray(image[np.newaxis], rng, params=gray_params)[0]
        out[index] = normalise_image(augmented, size)
    return out
