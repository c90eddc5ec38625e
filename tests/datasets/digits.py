"""A digits-like image set drawn with Pillow (scikit-learn's digits are not installed here).

28x28 grayscale PNGs of the ten digits as seven-segment strokes, each with its own offset, scale,
stroke width and noise, so no two images are identical (duplicates would be dropped on import).
Used by the tests, ``scripts/bench-datasets`` and ``scripts/demo_datasets.py``.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Seven-segment-like strokes per digit on a 0..1 box: (x0, y0, x1, y1) segments.
_SEGMENTS = {
    "a": (0.2, 0.1, 0.8, 0.1),
    "b": (0.8, 0.1, 0.8, 0.5),
    "c": (0.8, 0.5, 0.8, 0.9),
    "d": (0.2, 0.9, 0.8, 0.9),
    "e": (0.2, 0.5, 0.2, 0.9),
    "f": (0.2, 0.1, 0.2, 0.5),
    "g": (0.2, 0.5, 0.8, 0.5),
}
_DIGITS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"]


def digit_png(digit: int, rng: random.Random, size: int = 28) -> bytes:
    """A grayscale PNG of ``digit``: segments with random offset, scale, width and noise."""
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    scale = size * rng.uniform(0.55, 0.75)
    ox = rng.uniform(1, size - scale - 1)
    oy = rng.uniform(1, size - scale - 1)
    width = rng.randint(2, 3)
    for seg in _DIGITS[digit]:
        x0, y0, x1, y1 = _SEGMENTS[seg]
        draw.line(
            [(ox + x0 * scale, oy + y0 * scale), (ox + x1 * scale, oy + y1 * scale)],
            fill=rng.randint(180, 255),
            width=width,
        )
    arr = np.asarray(im, dtype=np.int16)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(0, 40, arr.shape)
    out = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8), "L")
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def write_digits(folder: Path, per_class: int, seed: int = 0, size: int = 28) -> dict[str, str]:
    """ImageFolder layout ``<digit>/<n>.png``; returns {relative path: label}."""
    rng = random.Random(seed)
    truth: dict[str, str] = {}
    for digit in range(10):
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rel = f"{digit}/{digit}-{i:04d}.png"
            (folder / rel).write_bytes(digit_png(digit, rng, size))
            truth[rel] = str(digit)
    return truth


def inverted_digit_png(digit: int, rng: random.Random, size: int = 28) -> bytes:
    """The same drawing inverted (dark strokes on a light background): digits in another
    style, which a model trained on ``digit_png`` alone has not learnt (the data flywheel's
    tests and demo)."""
    with Image.open(io.BytesIO(digit_png(digit, rng, size))) as im:
        pixels = 255 - np.asarray(im.convert("L"), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    return buf.getvalue()


def inverted_digits(n: int, seed: int) -> list[tuple[bytes, int]]:
    """``n`` distinct inverted digit PNGs with their digits, the classes in turn."""
    rng = random.Random(seed)
    out: dict[bytes, int] = {}
    while len(out) < n:
        digit = len(out) % 10
        out.setdefault(inverted_digit_png(digit, rng), digit)
    return list(out.items())
