"""Where the service's images come from: uploaded bytes, and galaxies of a local raw-layout folder.

Uploaded bytes are checked (size, format, pixel count from the header alone, so a
decompression bomb is refused before it is decoded) and then read by the same reader as
``inclinet-predict`` (:func:`inclinet.images.load_image`). Catalog galaxies are read from
the raw layout: ``pgc<id>_d25x2_rot_gri.sdss.jpg`` (or ``.jpg``) is used as it is;
``pgc<id>_d25x<F>_gri...`` (a north-up cutout of F x D25) and, with a pixel scale, any other
``pgc<id>_<root>_gri...`` are rotated by the catalog's ``pa`` + 90 deg (the original GUI's
rule for sky cutouts, astronomical position angle) and cropped or padded to 2 x D25.
"""

import io
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from inclinet.catalog import find_raw_image, read_catalog
from inclinet.errors import InputError
from inclinet.images import load_image
from inclinet.naming import DEFAULT_ROOT, RAW_PATTERN

#: Extensions accepted for uploads (the original's list).
UPLOAD_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif")
#: Content types accepted for an uploaded part (``application/octet-stream``: a client that does not guess).
UPLOAD_CONTENT_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/gif", "application/octet-stream")
_FORMATS = ("PNG", "JPEG", "MPO", "GIF")
_PGC_PATTERN = re.compile(r"^(?:pgc)?0*(\d{1,9})$", re.IGNORECASE)
_FOV_ROOT = re.compile(r"^d25x(?P<factor>\d+(?:\.\d+)?)(?P<rotated>_rot)?$")


class RequestProblem(Exception):
    """Bad input of one request: ``status`` (an HTTP 4xx code) and a message saying what to do."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def safe_name(filename):
    """The base name of an uploaded file, without folders or control characters (for messages)."""
    name = os.path.basename(str(filename or "").replace("\\", "/"))
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return name or "upload"


def check_upload(filename, content_type):
    """Refuse an upload by its name or declared type (415), before its bytes are looked at."""
    name = safe_name(filename)
    extension = Path(name).suffix.lower()
    if extension not in UPLOAD_EXTENSIONS:
        raise RequestProblem(
            415, f"{name}: extension {extension or '(none)'} not accepted; upload a PNG, JPG, JPEG or GIF file"
        )
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared and declared not in UPLOAD_CONTENT_TYPES:
        raise RequestProblem(
            415,
            f"{name}: content type {declared} is not an image; "
            "upload a PNG, JPG, JPEG or GIF file (image/png, image/jpeg, image/gif)",
        )
    return name


def decode_upload(data, name, *, max_bytes, max_pixels, scratch):
    """``uint8 (H, W, 3)`` of an uploaded image, or :class:`RequestProblem` saying why not."""
    if len(data) == 0:
        raise RequestProblem(400, f"{name}: empty file (0 bytes); upload the image itself")
    if len(data) > max_bytes:
        raise RequestProblem(
            413, f"{name}: {len(data)} bytes is over the {max_bytes}-byte limit; upload a smaller image"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
                found = header.format
    except Image.DecompressionBombError:
        raise RequestProblem(
            413, f"{name}: image dimensions far beyond the {max_pixels}-pixel limit; upload a smaller cutout"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RequestProblem(
            400, f"{name}: not a readable image ({exc.__class__.__name__}); upload a PNG, JPEG or GIF file"
        ) from None
    if found not in _FORMATS:
        raise RequestProblem(415, f"{name}: {found} images are not accepted; upload a PNG, JPEG or GIF file")
    if width * height > max_pixels:
        raise RequestProblem(
            413,
            f"{name}: image of {width} x {height} pixels is over the {max_pixels}-pixel limit; upload a smaller cutout",
        )
    if min(width, height) < 8:
        raise RequestProblem(400, f"{name}: image of {width} x {height} pixels is too small; at least 8 x 8 are needed")
    # The same reader as inclinet-predict, which takes a path: a private temporary file.
    handle, path = tempfile.mkstemp(dir=scratch, suffix=Path(name).suffix.lower())
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        return load_image(path)
    except InputError as exc:
        raise RequestProblem(400, str(exc).replace(path, name)) from None
    finally:
        os.unlink(path)


def transform(image, *, angle=0.0, scale=1.0):
    """The view a user set in the GUI: pad to square (black), turn ``angle`` deg clockwise, zoom by ``scale``.

    As the original's ``converIMAGE``: the canvas grows with the rotation, then the central
    square of side ``side / scale`` is kept (``scale`` > 1 zooms in; < 1 pads with black, which
    the canonical normalisation treats as fill, not sky). Returns ``uint8 (S, S, 3)``.
    """
    if not np.isfinite(angle) or not np.isfinite(scale) or scale <= 0:
        raise RequestProblem(422, f"invalid angle/scale: {angle}, {scale}; must be finite numbers with scale > 0")
    if angle % 360 == 0 and scale == 1 and image.shape[0] == image.shape[1]:
        return image
    height, width = image.shape[:2]
    side = max(height, width)
    square = Image.new("RGB", (side, side))
    square.paste(Image.fromarray(image), ((side - width) // 2, (side - height) // 2))
    # PIL turns counter-clockwise for positive angles; the GUI (CSS rotate) turns clockwise.
    turned = square.rotate(-float(angle), resample=Image.BICUBIC, expand=True, fillcolor=(0, 0, 0))
    target = max(8, int(round(side / float(scale))))
    canvas = Image.new("RGB", (target, target))
    canvas.paste(turned, ((target - turned.width) // 2, (target - turned.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def parse_pgc(text):
    """The PGC number in ``text`` (``44182`` or ``PGC44182``), or 400 naming what was sent."""
    match = _PGC_PATTERN.match(str(text).strip())
    if not match or int(match.group(1)) == 0:
        shown = str(text)[:40].encode("unicode_escape").decode("ascii")
        raise RequestProblem(400, f"invalid pgc: {shown!r}; must be a PGC number like 44182 or PGC44182")
    return int(match.group(1))


@dataclass(frozen=True)
class GalaxyImage:
    """A catalog galaxy's image, already in the ``d25x2_rot`` form the models were trained on."""

    pgc: int
    image: np.ndarray
    file: str
    prepared: str  # what was done to the file: "as is" or the rotation and framing applied
    galaxy: object


class Galaxies:
    """The catalog (read once at start-up) and the raw-layout folder of a service."""

    def __init__(self, images, catalog, *, pixel_scale=None, max_pixels):
        self.folder = Path(images)
        if not self.folder.is_dir():
            raise InputError(f"{self.folder}: --images folder not found; give the folder of the raw images")
        self.catalog_path = Path(catalog)
        self.galaxies = {int(g.pgc): g for g in read_catalog(catalog)}
        self.pixel_scale = pixel_scale
        self.max_pixels = int(max_pixels)

    def __len__(self):
        return len(self.galaxies)

    def get(self, pgc):
        """The galaxy's image in ``d25x2_rot`` form; 404 when it is not in the catalog or has no image."""
        galaxy = self.galaxies.get(pgc)
        if galaxy is None:
            raise RequestProblem(
                404,
                f"Could not find PGC{pgc} in the catalog {self.catalog_path.name}; "
                "check the number or start the service with a catalog that has it",
            )
        path, root = self._find(pgc)
        if path is None:
            raise RequestProblem(
                404,
                f"no colour image of PGC{pgc} in {self.folder.name}/ (looked for "
                f"pgc{pgc}_{DEFAULT_ROOT}_gri.sdss.jpg, .jpg and pgc{pgc}_d25x<F>_gri...); "
                "add its image to the --images folder",
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as header:
                    width, height = header.size
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            raise RequestProblem(
                422, f"{path.name}: not a readable image ({exc.__class__.__name__}); replace it in the --images folder"
            ) from None
        if width * height > self.max_pixels:
            raise RequestProblem(
                413, f"{path.name}: image of {width} x {height} pixels is over the {self.max_pixels}-pixel limit"
            )
        try:
            image = load_image(path)
        except InputError as exc:
            raise RequestProblem(422, f"{exc}") from None
        if root == DEFAULT_ROOT:
            return GalaxyImage(pgc, image, path.name, "as is", galaxy)
        angle, scale = self._framing(root, galaxy, image)
        framed = transform(image, angle=angle, scale=scale)
        return GalaxyImage(pgc, framed, path.name, f"turned {angle:g} deg clockwise, zoomed x{scale:.3g}", galaxy)

    def _find(self, pgc):
        found = find_raw_image(self.folder, pgc, "gri")
        if found is not None:
            return found, DEFAULT_ROOT
        candidates = []
        # pgc is an integer here, so the pattern cannot reach outside the folder.
        for path in sorted(self.folder.glob(f"pgc{pgc}_*_gri.*")):
            match = RAW_PATTERN.match(path.name)
            if not match or int(match.group("pgc")) != pgc or not path.is_file():
                continue
            root = match.group("root")
            if _FOV_ROOT.match(root) or self.pixel_scale:
                candidates.append((path, root))
        return candidates[0] if candidates else (None, None)

    def _framing(self, root, galaxy, image):
        match = _FOV_ROOT.match(root)
        if match:
            factor = float(match.group("factor"))
            angle = 0.0 if match.group("rotated") else galaxy.pa + 90.0
        else:
            if galaxy.d25 <= 0:
                raise RequestProblem(422, f"PGC{galaxy.pgc}: the catalog has no d25, needed to frame {root} images")
            field_arcmin = max(image.shape[:2]) * self.pixel_scale / 60.0
            factor = field_arcmin / galaxy.d25
            angle = galaxy.pa + 90.0
        return angle, factor / 2.0
