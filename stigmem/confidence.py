"""``effective_confidence`` of fact records (WIRE.md §2.5, §7).

The core does not know decay policies; the decay app registers the function that does, so the
record stays null on a node without policies and the core imports no app.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from stigmem.models import Fact

Provider = Callable[[Fact, datetime], float | None]

_provider: Provider | None = None


def register(provider: Provider) -> None:
    global _provider
    _provider = provider


def effective_confidence(fact: Fact, now: datetime) -> float | None:
    """The fact's decayed confidence when a half-life applies to it, else None."""
    return _provider(fact, now) if _provider is not None else None
