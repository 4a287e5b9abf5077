"""Bad-input cases for the fault tests, generated on the spot (nothing stored).

``python tests/faults/bad_inputs.py DIR`` writes every case into DIR and prints them;
the tests call :func:`image_cases` and :func:`catalog_cases` on a temporary folder. Each
case is ``(name, path, expected)``: what reading ``path`` must say (a substring of the
one-line error), never a traceback.
"""

import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = "d25x2_rot"


def _png_bytes(size=64):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")
    return buffer.getvalue()


def image_cases(folder):
    """Files in place of images, each named as a raw image would be."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png = _png_bytes()
    cases = []

    def name(pgc, band="g"):
        suffix = "gri.sdss.jpg" if band == "gri" else f"{band}.png"
        return folder / f"pgc{pgc}_{ROOT}_{suffix}"

    path = name(1)
    path.write_bytes(b"")
    cases.append(("empty file", path, "empty image file (0 bytes)"))
    path = name(2)
    path.write_bytes(png[: 2 * len(png) // 3])
    cases.append(("truncated PNG", path, "corrupt or truncated image"))
    path = name(3)
    path.write_text("pgc,inc\n1,60\n")
    cases.append(("text named .png", path, "not a readable image"))
    path = name(4)
    path.mkdir()
    cases.append(("directory", path, "is a directory, not an image file"))
    path = name(5)
    os.mkfifo(path)
    cases.append(("FIFO", path, "is a named pipe (FIFO)"))
    path = name(6)
    path.symlink_to(path.name)
    cases.append(("symbolic link loop", path, "symbolic link loop"))
    path = name(7)
    path.symlink_to(folder / "nowhere.png")
    cases.append(("broken symbolic link", path, "broken symbolic link"))
    path = name(8, "gri")
    path.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(64))
    cases.append(("JPEG header then noise", path, "image"))
    path = name(9)
    path.write_bytes(png)
    path.chmod(0)
    # root reads anything: the case only applies to ordinary users.
    cases.append(("unreadable (permission)", path, None if os.geteuid() == 0 else "permission denied"))
    return cases


def catalog_cases(folder):
    """Catalog files that must be refused with their file and line named."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = {
        "empty": ("", "empty catalog"),
        "header only": ("pgc,inc\n", "header but no rows"),
        "semicolons": ("pgc;inc\n1;60\n", "cannot detect the column separator"),
        "no inc column": ("pgc,inc_flg\n1,0\n", "missing column inc"),
        "not a number": ("pgc,inc\n1,sixty\n", "line 2: column inc: 'sixty' is not a number"),
        "duplicate pgc": ("pgc,inc\n1,60\n1,70\n", "duplicate pgc 1"),
        "short row": ("pgc,inc,inc_flg\n1,60\n", "line 2: 2 fields, the header has 3"),
        "binary junk": (None, "not a UTF-8 text file"),
    }
    cases = []
    for index, (name, (text, expected)) in enumerate(texts.items()):
        path = folder / f"catalog_{index:02d}.csv"
        if text is None:
            path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)))
        else:
            path.write_text(text)
        cases.append((name, path, expected))
    path = folder / "catalog_dir.csv"
    path.mkdir()
    cases.append(("directory as catalog", path, "not a regular file"))
    return cases


def main(argv):
    if len(argv) != 1:
        print("usage: bad_inputs.py DIR", file=sys.stderr)
        return 2
    for name, path, expected in image_cases(Path(argv[0]) / "images") + catalog_cases(Path(argv[0]) / "catalogs"):
        print(f"{name:28s} {path}  ->  {expected or '(not applicable as root)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
