"""Federation background tasks, run by the django-q2 cluster (schedules registered in apps.py).

The pull schedule fires at most once a minute, but STIGMEM_FEDERATION_PULL_INTERVAL_S may be
shorter (the default is 30 s), and a peer with a backlog is due again as soon as its pull ran out
of budget. So one run of ``pull_due_peers`` keeps going for most of its minute: after each cycle
it sleeps until the next peer is due and pulls again, starting cycles only within the first
RUN_WINDOW_S seconds. It returns early when no peer will be due within that window (or there is
no active peer at all), so an idle node does not keep a worker busy. Runs that overlap, from
this schedule or another worker, are harmless: a peer being pulled holds its lease and is
skipped by everyone else.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.db.models import Min, Q
from django.utils import timezone

from federation import pull, tokens
from federation.models import Peer

# Cycles start only this long after the run began, so a run ends about when the next one starts.
RUN_WINDOW_S = 55.0
# Never poll the peer table faster than this, e.g. while every due peer is leased elsewhere.
MIN_PAUSE_S = 1.0


def _next_due_in() -> float | None:
    """Seconds until the next active peer is due for a pull (0: now); None when there is none."""
    now = timezone.now()
    active = Peer.objects.filter(status=Peer.Status.ACTIVE)
    if not active.exists():
        return None
    free = active.filter(Q(pull_lease_until__isnull=True) | Q(pull_lease_until__lte=now))
    if free.filter(next_pull_at__isnull=True).exists():
        return 0.0
    earliest = free.aggregate(earliest=Min("next_pull_at"))["earliest"]
    if earliest is None:  # every active peer is being pulled elsewhere right now
        return float(settings.STIGMEM_FEDERATION_PULL_INTERVAL_S)
    return max(0.0, (earliest - now).total_seconds())


def pull_due_peers() -> int:
    """Pull the due peers, cycle after cycle, for up to a minute; returns the number of pulls."""
    if not settings.STIGMEM_FEDERATION_ENABLED:
        return 0
    started = time.monotonic()
    pulls = 0
    while True:
        pulls += len(pull.pull_due_peers())
        wait = _next_due_in()
        if wait is None:
            return pulls
        wait = max(wait, MIN_PAUSE_S)
        if time.monotonic() + wait - started >= RUN_WINDOW_S:
            return pulls
        time.sleep(wait)


def prune_nonces() -> int:
    """Forget peer-token nonces that can no longer be replayed."""
    if not settings.STIGMEM_FEDERATION_ENABLED:
        return 0
    return tokens.prune_nonces()
