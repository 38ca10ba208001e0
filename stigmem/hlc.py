"""Hybrid logical clock values ``"<wall_ms>.<counter>"`` (WIRE.md §2.6).

Pure functions; the node's one clock state lives in ``NodeClock`` (see ``stigmem.clock``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HLC = re.compile(r"^(\d{1,16})\.(\d{1,9})$")


@dataclass(frozen=True, order=True)
class Hlc:
    wall_ms: int
    counter: int

    def __str__(self) -> str:
        return f"{self.wall_ms}.{self.counter}"

    @classmethod
    def parse(cls, text: str) -> Hlc:
        match = _HLC.match(text)
        if match is None:
            raise ValueError(f"not an HLC value: {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))


def tick(last: Hlc, now_ms: int) -> Hlc:
    """The next local timestamp: physical time if it moved on, else the counter."""
    if now_ms > last.wall_ms:
        return Hlc(now_ms, 0)
    return Hlc(last.wall_ms, last.counter + 1)


def merge(last: Hlc, remote: Hlc, now_ms: int) -> Hlc:
    """The timestamp of receiving ``remote``: later than both clocks (the max rule)."""
    wall = max(last.wall_ms, remote.wall_ms, now_ms)
    if wall == last.wall_ms == remote.wall_ms:
        counter = max(last.counter, remote.counter) + 1
    elif wall == last.wall_ms:
        counter = last.counter + 1
    elif wall == remote.wall_ms:
        counter = remote.counter + 1
    else:
        counter = 0
    return Hlc(wall, counter)
