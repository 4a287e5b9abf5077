"""Raw galaxy images: reading (PNG/JPEG/GIF) to uint8 RGB arrays, padding to square, resizing.

Grayscale images come back as three identical channels and alpha channels are dropped
(the original averaged an ``LA`` image's alpha into its luminance; we do not).
"""

import errno
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from inclinet.errors import InputError, invalid

#: Pillow format names accepted by :func:`load_image` (MPO is a multi-picture JPEG).
SUPPORTED_FORMATS = ("PNG", "JPEG", "MPO", "GIF")


def load_image(path):
    """Read an image file into a ``uint8 (H, W, 3)`` array.

    Grayscale modes (``1``, ``L``, ``LA``, ``I;16``, ``I``, ``F``, grey palettes) become
    three identical channels; 16-bit values are scaled to 8 bits; alpha is dropped. Only
    the first frame of an animated GIF is used. Raises :class:`InputError` naming the file
    when it is missing, empty, truncated, corrupt or not a PNG/JPEG/GIF.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise InputError(f"{path}: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.format not in SUPPORTED_FORMATS:
                    raise InputError(f"{path}: unsupported image format {image.format}; use PNG, JPEG or GIF")
                image.load()
                array = _to_rgb_array(image)
    except InputError:
        raise
    except PermissionError:
        raise InputError(f"{path}: image not readable (permission denied); fix its permissions") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{path}: not a readable image ({exc}); use a PNG, JPEG or GIF file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: corrupt or truncated image ({exc}); re-download or re-render it") from None
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{path}: image has no pixels")
    return array


def file_problem(path):
    """Why ``path`` cannot be opened as an image file (one phrase with what to do), or None.

    Tells apart a missing file, a dangling link, a symbolic-link loop, a directory, a FIFO
    or other special file, an unreadable (permission) file and an empty one, instead of
    calling them all "not found".
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return f"broken symbolic link (points to {os.readlink(path)}, which does not exist); fix or remove it"
        return "image not found"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link points back to itself); replace it with the image file"
        if exc.errno == errno.EACCES:
            return "image not reachable (permission denied on its folder); fix the permissions"
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not an image file; give the image inside it"
    if stat.S_ISFIFO(info.st_mode):
        return "is a named pipe (FIFO), not an image file; give a regular PNG/JPEG/GIF file"
    if not stat.S_ISREG(info.st_mode):
        return "is a special file (device or socket), not an image file; give a regular PNG/JPEG/GIF file"
    if not os.access(path, os.R_OK):
        return "image not readable (permission denied); fix its permissions"
    if info.st_size == 0:
        return "empty image file (0 bytes); re-download or re-render it"
    return None


def _to_rgb_array(image):
    mode = image.mode
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if mode in ("RGBA", "RGBX", "RGBa", "P", "PA"):
        # Alpha dropped; palette colours, transparency ignored (a grey palette gives identical channels).
        return np.ascontiguousarray(np.asarray(image.convert("RGBA"), dtype=np.uint8)[..., :3])
    if mode in ("L", "1"):
        gray = np.asarray(image.convert("L"), dtype=np.uint8)
    elif mode == "LA" or mode == "La":
        gray = np.asarray(image.getchannel("L"), dtype=np.uint8)
    elif mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale (PNG): scale the full 0..65535 range to 0..255.
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    elif mode == "F":
        gray = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
    else:
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _check_fill(fill):
    if isinstance(fill, bool) or not isinstance(fill, (int, np.integer)) or not 0 <= int(fill) <= 255:
        raise invalid("fill", fill, "an integer grey level 0..255 (0 black, 255 white)")
    return int(fill)


def pad_to_square(image, fill):
    """Centre ``image`` (H, W[, C]) on a square canvas of side max(H, W) filled with ``fill``.

    Never crops or stretches; an odd difference puts the extra row/column after the image.
    """
    fill = _check_fill(fill)
    image = np.asarray(image)
    height, width = image.shape[:2]
    side = max(height, width)
    if height == width:
        return image.copy()
    top = (side - height) // 2
    left = (side - width) // 2
    canvas = np.full((side, side) + image.shape[2:], fill, dtype=image.dtype)
    canvas[top : top + height, left : left + width] = image
    return canvas


def resize_square(image, size):
    """Resize a square image to ``uint8 (size, size, 3)`` with Pillow's Lanczos filter.

    Downsampling with Lanczos is anti-aliased (the kernel widens with the scale factor).
    Grayscale input becomes three identical channels. Raises ``ValueError`` for a
    non-square image: pad it first with :func:`pad_to_square`.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise invalid("size", size, "a positive integer number of pixels")
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image of shape {image.shape} is not (H, W), (H, W, 3) or (H, W, 4)")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[:, :, :3]
    if image.shape[0] != image.shape[1]:
        raise ValueError(f"image of shape {image.shape[:2]} is not square; pad it with pad_to_square first")
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if image.shape[0] == size:
        return np.ascontiguousarray(image)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((int(size), int(size)), Image.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def prepare_image(path, size, *, fill):
    """Load an image, pad it to a square with ``fill`` and resize it to ``size`` pixels."""
    return resize_square(pad_to_square(load_image(path), fill), size)
