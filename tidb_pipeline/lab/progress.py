"""A progress bar per phase for the demo and the lab's long commands (no dependency).

    with Phase("go-tpc prepare", total=600_000, unit="rows") as bar:
        bar.update(done)       # absolute; from any thread
        bar.note("loading stock")

On a terminal the bar redraws in place (at most 10 times a second); otherwise (a log file, a test's
captured output) only the phase's first and last lines are printed, so logs stay short.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO


class Phase:
    """One phase's bar: `total` None draws elapsed time only."""

    WIDTH = 28

    def __init__(self, name: str, total: float | None = None, *, unit: str = "", stream: IO[str] | None = None,
                 prefix: str = "[demo]") -> None:
        self.name, self.total, self.unit, self.prefix = name, total, unit, prefix
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done: float = 0
        self.detail = ""
        self._started = time.monotonic()
        self._drawn = 0.0
        self._lock = threading.Lock()

    def __enter__(self) -> Phase:
        self._started = time.monotonic()
        if not self.tty:
            self.stream.write(f"{self.prefix} {self.name} ...\n")
            self.stream.flush()
        self._draw(force=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.total:
            self.done = max(self.done, self.total)
        self._draw(force=True, final=True, failed=exc_type is not None)

    def update(self, done: float, detail: str | None = None) -> None:
        with self._lock:
            self.done = done
            if detail is not None:
                self.detail = detail
        self._draw()

    def advance(self, by: float = 1, detail: str | None = None) -> None:
        self.update(self.done + by, detail)

    def note(self, detail: str) -> None:
        with self._lock:
            self.detail = detail
        self._draw()

    def line(self) -> str:
        elapsed = time.monotonic() - self._started
        if self.total:
            frac = min(1.0, self.done / self.total) if self.total else 0.0
            filled = int(frac * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            count = f"{self.done:,.0f}/{self.total:,.0f}{' ' + self.unit if self.unit else ''}"
            body = f"[{bar}] {frac * 100:3.0f}%  {count}"
        else:
            body = f"{self.done:,.0f} {self.unit}" if self.unit else ""
        detail = f"  {self.detail}" if self.detail else ""
        return f"{self.prefix} {self.name:<26} {body}  {elapsed:6.1f}s{detail}"

    def _draw(self, *, force: bool = False, final: bool = False, failed: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and (not self.tty or now - self._drawn < 0.1):
                return
            self._drawn = now
            text = self.line() + ("  FAILED" if failed else "")
            if self.tty:
                self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
            elif final:
                self.stream.write(text + "\n")
            self.stream.flush()
