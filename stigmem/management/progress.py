"""A progress bar for management commands, drawn only on a terminal (cron and pipes get none)."""

from __future__ import annotations

BAR_WIDTH = 40


class ProgressBar:
    """A one-line bar redrawn in place with a carriage return."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.drawn = False

    def __call__(self, fraction: float) -> None:
        fraction = min(1.0, max(0.0, fraction))
        filled = round(fraction * BAR_WIDTH)
        self.stream.write(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:5.1f}%")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
