"""Aspect-preserving augmentation chains for grayscale and colour galaxy images.

The chains follow the original IncliNET augmenter with two documented fixes: the affine
step uses ONE isotropic scale factor (independent x/y scaling changes the apparent axial
ratio and so the inclination label), and colour images get the colour chain (the original
sent them through the gray one). Geometry: rotation by any angle, flips, shifts and one
scale in one bilinear warp (OpenCV, all channels at once), with the uncovered border filled
with the image's own background and sky noise (measured on its outer ring), so no white or
random-valued frames appear. Photometry: gamma, contrast, brightness offset, Gaussian noise,
blur and (colour only) partial desaturation. Geometry is applied first, then photometry (a fixed order, where the
original drew a random order per image). Every augmented image then goes through the
canonical normalisation (:func:`inclinet.normalise.normalise_image`; for many views at once,
:func:`inclinet.normalise.normalise_batch`, the same outputs), exactly as prep and predict do,
so what the models train on is what they are later shown. The normalisation unifies polarity
(galaxies bright on a dark sky), so the original's inversion of half the gray images is gone:
it would be undone.

The chain and the second normalisation smooth the pixel texture (each resamples: in the
workflow's 64-px views the Laplacian variance falls to about 0.4 of a canonical image's, the
sky noise staying the same), so a classifier trained on such views reads the sharper
canonical images it is shown later as something else. :func:`dihedral_views` is the
augmentation without resampling (the reject members' batches use it).

All functions take a ``numpy.random.Generator`` and draw from it in a fixed order, so a
batch is reproducible from its seed (noise is drawn in single precision, as the images are
processed). Images are ``uint8 (N, S, S, 3)``; grayscale images keep 3 identical channels.
"""

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from inclinet.normalise import BATCH_CHUNK, _medians, normalise_batch

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
    return np.concatenate(
        [
            image[:2].reshape(-1, *tail),
            image[-2:].reshape(-1, *tail),
            image[2:-2, :2].reshape(-1, *tail),
            image[2:-2, -2:].reshape(-1, *tail),
        ]
    )


def background(image):
    """Per-channel background level: the median of the image's outer 2-pixel ring."""
    return np.median(_ring(image), axis=0)


def warp(planes, matrix, offset, rng):
    """Resample float planes ``(C, S, S)`` through the inverse affine map ``matrix``, ``offset``.

    ``input = matrix @ output + offset`` (row, column). Pixels the map brings in from
    outside the frame get each plane's background plus Gaussian noise of its measured sky
    noise, so the sky stays statistically uniform (a flat border would look like a frame
    and would bias background/noise estimates such as :func:`inclinet.axial.axial_ratio`).
    """
    image = np.ascontiguousarray(np.moveaxis(np.asarray(planes, dtype=np.float32), 0, -1))
    return np.moveaxis(_warp_image(image, matrix, offset, rng), -1, 0)


def _warp_image(image, matrix, offset, rng):
    """:func:`warp` of one image laid out ``(S, S, C)`` float32 (OpenCV's layout: all channels in one pass)."""
    height, width, n_channels = image.shape
    ring = np.ascontiguousarray(_ring(image).T)  # (C, n): medians along contiguous rows
    fills = _medians(ring)  # np.median's values, faster
    noises = 1.4826 * _medians(np.abs(ring - fills[:, None]))
    # OpenCV maps (x, y) = (column, row): the same inverse map with its axes swapped.
    cv_matrix = np.array([[matrix[1][1], matrix[1][0], offset[1]], [matrix[0][1], matrix[0][0], offset[0]]])
    border = tuple(float(value) for value in fills) + (0.0,) * (4 - n_channels)
    out = cv2.warpAffine(
        image,
        cv_matrix,
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border,
    ).reshape(image.shape)
    if noises.any():
        where = np.flatnonzero(_outside((height, width), matrix, offset))
        if len(where):
            pixels = out.reshape(-1, n_channels)
            pixels[where] += rng.standard_normal((len(where), n_channels), dtype=np.float32) * noises.astype(np.float32)
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


@functools.lru_cache(maxsize=8)
def _grid(shape):
    rows, columns = np.indices(shape, dtype=np.float32)
    rows.flags.writeable = columns.flags.writeable = False
    return rows, columns


def _outside(shape, matrix, offset):
    """Output pixels whose source lies outside the input frame (filled with the border value)."""
    rows, columns = _grid(tuple(shape))
    matrix, offset = np.asarray(matrix, dtype=np.float32), np.asarray(offset, dtype=np.float32)
    source_rows = matrix[0, 0] * rows + matrix[0, 1] * columns + offset[0]
    source_columns = matrix[1, 0] * rows + matrix[1, 1] * columns + offset[1]
    return (source_rows < 0) | (source_rows > shape[0] - 1) | (source_columns < 0) | (source_columns > shape[1] - 1)


def _augment_image(image, rng, params, colour):
    """Augment one image given as float32 ``(S, S, C)`` (C = 1 gray, 3 colour); returns uint8 ``(S, S, C)``."""
    matrix, offset = _affine_matrix(image.shape[0], rng, params)
    image = _warp_image(image, matrix, offset, rng)

    n_channels = image.shape[-1]
    per_channel = colour and rng.random() < params.per_channel_probability
    draws = n_channels if per_channel else 1
    gamma = rng.uniform(*params.gamma_range)
    contrast = rng.uniform(*params.contrast_range, size=draws).astype(np.float32)
    low, high = params.offset_range
    offsets = rng.integers(low, high + 1, size=draws).astype(np.float32)
    noise_sigma = rng.uniform(0.0, params.noise_max) if params.noise_max > 0 else 0.0
    blur_sigma = rng.uniform(0.0, params.blur_sigma_max) if rng.random() < params.blur_probability else 0.0
    desaturate = rng.uniform(0.0, 1.0) if colour and rng.random() < params.desaturate_probability else 0.0
    if colour and rng.random() < params.full_gray_probability:
        desaturate = 1.0

    if blur_sigma > 0:
        # Reflecting border, as scipy.ndimage's default; the kernel reaches 4 sigma.
        image = cv2.GaussianBlur(image, (0, 0), blur_sigma, borderType=cv2.BORDER_REFLECT).reshape(image.shape)
    image = _gamma(image, np.float32(gamma))
    image *= contrast
    image += offsets
    if noise_sigma > 0:
        noise_shape = image.shape if per_channel else image.shape[:2] + (1,)
        image += rng.standard_normal(noise_shape, dtype=np.float32) * np.float32(noise_sigma)
    if desaturate > 0:
        gray = image.mean(axis=-1, keepdims=True)
        image = np.float32(1.0 - desaturate) * image + np.float32(desaturate) * gray
    np.rint(image, out=image)
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


def _gamma(values, gamma):
    """``255 (clip(values, 0, 255) / 255) ** gamma``, in place on the float32 array ``values``.

    As ``exp(gamma log(v))``: NumPy's vectorised single-precision log and exp take less than
    half the time of its ``power``, and agree with it to about 1e-7 of full scale (a level
    within ~3e-5 of a half can round the other way).
    """
    np.clip(values, 0.0, 255.0, out=values)
    np.multiply(values, np.float32(1.0 / 255.0), out=values)
    with np.errstate(divide="ignore"):  # log(0) = -inf, and exp(-inf) = 0 = 0 ** gamma
        np.log(values, out=values)
    np.multiply(values, gamma, out=values)
    np.exp(values, out=values)
    np.multiply(values, np.float32(255.0), out=values)
    return values


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
        out[index] = _augment_image(image[:, :, :1].astype(np.float32), rng, params, colour=False)
    return out


def augment_colour(images, rng, *, params=COLOUR_CHAIN):
    """Augment colour images ``uint8 (N, S, S, 3)`` with the colour chain."""
    images = _check_images(images)
    out = np.empty_like(images, dtype=np.uint8)
    for index, image in enumerate(images):
        out[index] = _augment_image(image.astype(np.float32), rng, params, colour=True)
    return out


def dihedral_views(images, rng, *, out=None):
    """Each image ``uint8 (N, S, S, 3)`` turned by a random multiple of 90 degrees and flipped with probability 1/2.

    The eight symmetries of the pixel grid move pixels without resampling, so a canonical
    image stays canonical bit for bit (no re-normalisation, the texture unchanged). Two draws
    per row, in row order. ``out`` (may be ``images``) receives the result.
    """
    images = _check_images(images)
    if out is None:
        out = np.empty_like(images, dtype=np.uint8)
    for index in range(len(images)):
        turns, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
        view = np.rot90(images[index], turns)
        out[index] = view[:, ::-1] if flip else view
    return out


def augment_batch(images, filters, rng, *, colour_params=COLOUR_CHAIN, gray_params=GRAY_CHAIN, out=None):
    """Augment a mixed batch: rows whose filter is ``c`` get the colour chain, the others the gray one.

    ``filters`` holds one code per row (``c``, ``g``, ``r``, ``i``; str or bytes). Each
    augmented row is normalised again (:func:`inclinet.normalise.normalise_batch`, the
    canonical normalisation of :data:`inclinet.normalise.BATCH_CHUNK` views at a time). Rows
    are augmented in order, so the result depends only on the generator's state. ``out``
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
    # The views of a chunk are drawn in row order, then normalised together (which draws nothing).
    for start in range(0, len(images), BATCH_CHUNK):
        stop = min(start + BATCH_CHUNK, len(images))
        views = np.empty((stop - start, size, size, 3), dtype=np.uint8)
        for index in range(start, stop):
            if codes[index] == COLOUR_CODE:
                views[index - start] = augment_colour(images[index][np.newaxis], rng, params=colour_params)[0]
            else:
                views[index - start] = augment_gray(images[index][np.newaxis], rng, params=gray_params)[0]
        out[start:stop] = normalise_batch(views, size)
    return out
