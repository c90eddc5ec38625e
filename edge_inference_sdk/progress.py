"""Progress on stderr for the CLI: a bar on a terminal, a line every 10 % otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Bar:
    """``Bar("upload")(done, total)``: a callable the SDK's ``progress=`` accepts."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last_step = -1
        self._last_draw = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = f"{_size(done / elapsed)}/s"
        if total:
            fraction = min(done / total, 1.0)
            if self.tty:
                now = time.monotonic()
                if now - self._last_draw < 0.1 and done < total:
                    return
                self._last_draw = now
                filled = int(fraction * 30)
                bar = "#" * filled + "-" * (30 - filled)
                self.stream.write(
                    f"\r{self.label} [{bar}] {fraction:4.0%} {_size(done)}/{_size(total)} {rate}"
                )
                if done >= total:
                    self.stream.write("\n")
            else:
                step = int(fraction * 10)
                if step != self._last_step:
                    self._last_step = step
                    self.stream.write(f"{self.label}: {fraction:.0%} of {_size(total)} ({rate})\n")
        else:
            self.stream.write(f"\r{self.label}: {_size(done)} {rate}" if self.tty else "")
        self.stream.flush()


def status_line(label: str, text: str, stream: TextIO | None = None) -> None:
    """One line of a wait's progress (state changes)."""
    out = stream or sys.stderr
    out.write(f"{label}: {text}\n")
    out.flush()
