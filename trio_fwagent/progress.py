"""Progress display for people: a one-line bar on a terminal, periodic plain lines elsewhere.

Owns only the rendering of download progress (bytes, percentage, rate, ETA, resumes) and
of interleaved one-line messages. It never reads files or sockets and knows nothing about
how the numbers were obtained: callers feed it (it is directly usable as the downloader's
``on_progress`` callback). The text formatting functions are pure and unit-testable.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from trio_fwagent.download import Progress

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_BAR_WIDTH = 30  # fixed, so the bar does not jump when the numbers change length


def format_bytes(n: float) -> str:
    """Format a byte count with binary units: ``512 B``, ``1.5 MiB``."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(seconds: float | None) -> str:
    """Format a duration as ``m:ss`` (or ``h:mm:ss``); ``--:--`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds > 360_000:
        return "--:--"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta(done: int, total: int | None, rate: float) -> float | None:
    """Seconds left at ``rate`` bytes/s, or None when it cannot be known."""
    if total is None or rate <= 0 or done > total:
        return None
    return (total - done) / rate


def render_line(
    label: str,
    done: int,
    total: int | None,
    rate: float,
    resumes: int = 0,
    *,
    width: int = 80,
    bar: bool = True,
) -> str:
    """Render one status line, at most ``width`` characters long.

    Args:
        label: a short word in front (``download``).
        done: bytes so far.
        total: expected size, None when unknown.
        rate: bytes per second.
        resumes: how many times the transfer resumed after an interruption.
        width: the terminal width; the bar takes what the numbers leave over.
        bar: draw a bar (terminal) or not (plain log line).

    Returns:
        The line, without a newline.
    """
    if total:
        amount = f"{format_bytes(done)} / {format_bytes(total)} {min(100, 100 * done // total):3d}%"
    else:
        amount = format_bytes(done)
    parts = [amount, f"{format_bytes(rate)}/s", f"ETA {format_duration(eta(done, total, rate))}"]
    if resumes:
        parts.append(f"resumes {resumes}")
    numbers = "  ".join(parts)
    if not bar:
        return f"{label}: {numbers}"
    room = min(_BAR_WIDTH, width - len(label) - len(numbers) - 5)
    if room < 10:
        return f"{label} {numbers}"[:width]
    filled = room * min(done, total) // total if total else 0
    return f"{label} [{'#' * filled}{'.' * (room - filled)}] {numbers}"


class ProgressDisplay:
    """Shows progress on ``stream``: a redrawn bar on a TTY, a line every few seconds otherwise.

    Call it with a :class:`trio_fwagent.download.Progress` (or :meth:`update` with
    numbers); print other lines through :meth:`message` so they do not collide with the
    bar; call :meth:`finish` at the end. All methods are synchronous and cheap.

    Args:
        stream: where to write (default: ``sys.stderr`` at construction time).
        label: the word in front of every line.
        interactive: force the bar on or off (default: on when ``stream`` is a TTY).
        interval: seconds between plain lines when not interactive.
        clock: monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        label: str = "download",
        interactive: bool | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._label = label
        self._interactive = self._stream.isatty() if interactive is None else interactive
        self._interval = interval if not self._interactive else 0.1
        self._clock = clock
        self._last_draw: float | None = None
        self._line_shown = False
        self._last_plain = ""
        self._state: tuple[int, int | None, float, int] | None = None

    @property
    def interactive(self) -> bool:
        """Whether a redrawn bar (rather than plain lines) is shown."""
        return self._interactive

    def __call__(self, progress: Progress) -> None:
        """Take a progress report from the downloader."""
        self.update(progress.done, progress.total, progress.rate, progress.resumes)

    def update(self, done: int, total: int | None, rate: float, resumes: int = 0) -> None:
        """Record new numbers; draw them if the last drawing is old enough."""
        self._state = (done, total, rate, resumes)
        now = self._clock()
        complete = total is not None and done >= total
        if self._last_draw is None and not self._interactive:
            self._last_draw = now  # the first plain line comes after one interval
            return
        recent = self._last_draw is not None and now - self._last_draw < self._interval
        if recent and not (complete and self._interactive):
            return
        self._last_draw = now
        self._draw()

    def message(self, text: str) -> None:
        """Print one line of text above the bar (or between the plain lines)."""
        self._clear()
        self._stream.write(text + "\n")
        if self._interactive and self._state is not None:
            self._draw()
        self._stream.flush()

    def finish(self) -> None:
        """Leave the final numbers on their own line and stop drawing."""
        if self._state is not None:
            if self._interactive:
                self._draw()
                self._stream.write("\n")
            elif self._render() != self._last_plain:
                self._stream.write(self._render() + "\n")
        self._line_shown = False
        self._last_plain = ""
        self._state = None
        self._stream.flush()

    def _render(self) -> str:
        assert self._state is not None
        done, total, rate, resumes = self._state
        width = shutil.get_terminal_size((80, 24)).columns - 1
        return render_line(
            self._label, done, total, rate, resumes, width=width, bar=self._interactive
        )

    def _draw(self) -> None:
        if self._interactive:
            self._stream.write("\r" + self._render() + "\x1b[K")
            self._line_shown = True
        else:
            self._last_plain = self._render()
            self._stream.write(self._last_plain + "\n")
        self._stream.flush()

    def _clear(self) -> None:
        if self._interactive and self._line_shown:
            self._stream.write("\r\x1b[K")
            self._line_shown = False
