"""Open a scan safely: every way an upload can be wrong becomes one clear InputError.

Checked in order: the file exists and is a regular file, it is not larger than
``ocr.max_file_mb``, it is not a PDF (a PDF's first page is rendered with poppler's
``pdftoppm`` when that is installed; otherwise the error says to install poppler-utils),
Pillow recognises it, its pixel count is within ``ocr.max_pixels`` (decompression
bombs are refused before any pixel is decoded), and it decodes completely (a truncated
file is refused, never half-read).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from stampless.config import OcrConfig
from stampless.errors import InputError, OcrEngineError

PDF_MAGIC = b"%PDF"
PDF_DPI = 300


def _render_pdf(path: Path, config: OcrConfig) -> Path:
    """Render the first page of a PDF to PNG with pdftoppm, into a temporary folder."""
    exe = shutil.which("pdftoppm")
    if exe is None:
        raise InputError(
            f"Scan {path.name} is a PDF; install poppler-utils (pdftoppm) to read PDFs, "
            "or send the scan as a JPEG or PNG image."
        )
    out_dir = Path(tempfile.mkdtemp(prefix="stampless-pdf-"))
    try:
        subprocess.run(
            [
                exe,
                "-f",
                "1",
                "-l",
                "1",
                "-r",
                str(PDF_DPI),
                "-png",
                "-singlefile",
                str(path),
                str(out_dir / "page"),
            ],
            check=True,
            capture_output=True,
            timeout=config.timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        raise OcrEngineError(f"Rendering PDF {path.name} took too long; try again.") from exc
    except subprocess.CalledProcessError as exc:
        raise InputError(
            f"Scan {path.name} is not a readable PDF; send a JPEG or PNG scan instead."
        ) from exc
    return out_dir / "page.png"


def open_image(path: Path, config: OcrConfig) -> Image.Image:
    """Open ``path`` as an RGB image, upright per its EXIF orientation, fully decoded.

    Raises InputError (one sentence saying what to do) for a missing file, a file that is
    not an image, a truncated image, too many pixels, too large a file, or a PDF when
    pdftoppm is not installed.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Scan {path} does not exist; check the scan path in the request.")
    if not path.is_file():
        raise InputError(f"Scan {path} is not a file; give the path of an image file.")
    size_mb = path.stat().st_size / (1024 * 1024)
    if size_mb > config.max_file_mb:
        raise InputError(
            f"Scan {path.name} is {size_mb:.1f} MB, more than the {config.max_file_mb:g} MB "
            "allowed (ocr.max_file_mb); scan at a lower resolution or raise the limit."
        )
    if size_mb == 0:
        raise InputError(f"Scan {path.name} is empty; send the scan again.")
    with path.open("rb") as fh:
        head = fh.read(1024)
    if PDF_MAGIC in head:
        rendered = _render_pdf(path, config)
        try:
            return open_image(rendered, config)
        finally:
            shutil.rmtree(rendered.parent, ignore_errors=True)

    # Pillow's own bomb guard works on this global; set it so the library agrees with us.
    Image.MAX_IMAGE_PIXELS = config.max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    too_big = (
        f"Scan {path.name} has more than {config.max_pixels:,} pixels (ocr.max_pixels); "
        "scan at 300 DPI or less."
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if width * height > config.max_pixels:
                image.close()
                raise InputError(too_big)
            if width < 16 or height < 16:
                image.close()
                raise InputError(f"Scan {path.name} is only {width}x{height} pixels; rescan it.")
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(too_big) from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            f"Scan {path.name} is not an image Pillow can read; send a JPEG, PNG or TIFF scan."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated and corrupt data as OSError (and a few formats as
        # SyntaxError or ValueError).
        raise InputError(
            f"Scan {path.name} is truncated or corrupt; send the complete file again."
        ) from exc
    try:
        upright = ImageOps.exif_transpose(image)
        return upright.convert("RGB") if upright.mode != "RGB" else upright
    except (OSError, ValueError) as exc:
        raise InputError(
            f"Scan {path.name} is truncated or corrupt; send the complete file again."
        ) from exc
