"""Image probing and thumbnails (Pillow), translated into the control plane's error tree.

Every sample is probed once at import: the header gives its size (needed to check boxes and to
convert YOLO's normalised coordinates) and ``verify()`` walks the file's structure, so corrupt and
non-image files are refused with their name instead of failing later in a training job.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from control_plane.core.errors import InvalidRequest

# Formats a training script can be expected to read; anything else is refused at import.
MEDIA_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "BMP": "image/bmp",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
}
EXTENSIONS = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "BMP": ".bmp",
    "GIF": ".gif",
    "WEBP": ".webp",
    "TIFF": ".tif",
}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def probe(data: bytes, name: str, max_pixels: int) -> ImageInfo:
    """Size and format of an image held in memory; ``InvalidRequest`` naming ``name`` if bad."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format or ""
                width, height = im.size
                if fmt not in MEDIA_TYPES:
                    raise InvalidRequest(f"{name}: unsupported image format {fmt or 'unknown'}")
                if width <= 0 or height <= 0 or width * height > max_pixels:
                    raise InvalidRequest(
                        f"{name}: image is {width}x{height}, more than {max_pixels} pixels"
                    )
                im.verify()
    except InvalidRequest:
        raise
    except UnidentifiedImageError:
        raise InvalidRequest(f"{name}: not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest(f"{name}: image too large (decompression bomb)") from None
    except Exception as exc:  # Pillow raises many types (SyntaxError, OSError, struct.error...)
        raise InvalidRequest(f"{name}: corrupt image ({exc})") from None
    return ImageInfo(width, height, fmt)


def thumbnail(data: bytes, size: int) -> bytes:
    """A PNG at most ``size`` pixels on its longest side."""
    with Image.open(io.BytesIO(data)) as im:
        im.thumbnail((size, size))
        if im.mode not in ("RGB", "RGBA", "L", "LA"):
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        out = io.BytesIO()
        im.save(out, format="PNG")
        return out.getvalue()
