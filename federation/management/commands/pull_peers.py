"""``manage.py pull_peers [--peer ID] [--loop]``: pull from peers, for cron and systemd users.

Without ``--peer`` it pulls every due peer once (the scheduled task's cycle); with ``--peer`` it
pulls that peer now, whatever its back-off. One summary line per peer; the exit status is 1 when
any pull failed, so cron can alert. ``--loop`` repeats every STIGMEM_FEDERATION_PULL_INTERVAL_S
(at once while a peer has pages waiting) until SIGINT or SIGTERM, which let the current cycle
finish; the exit status then reflects the last cycle.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import uuid

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.db.models import Q

from federation import pull
from federation.models import Peer


class Command(BaseCommand):
    help = "Pull facts and tombstones from due peers (or one peer) once, or repeatedly with --loop."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--peer", help="peer id or node id: pull this peer now, even if it is backing off")
        parser.add_argument("--loop", action="store_true", help="keep pulling every interval until interrupted")

    def handle(self, *args, peer: str | None, loop: bool, **options) -> None:
        if not settings.STIGMEM_FEDERATION_ENABLED:
            raise CommandError("federation is not enabled on this node (STIGMEM_FEDERATION_ENABLED)")
        target = _find(peer) if peer is not None else None
        stop = threading.Event()
        previous = {}
        if loop:
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, lambda *_: stop.set())
        try:
            failed = self._run(target, loop, stop)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if failed:
            raise CommandError(f"{failed} pull(s) failed", returncode=1)

    def _run(self, target: Peer | None, loop: bool, stop: threading.Event) -> int:
        """Pull until done (or stopped); returns how many pulls of the last cycle failed."""
        while True:
            results = [pull.pull_peer(target)] if target is not None else pull.pull_due_peers()
            for result in results:
                self.stdout.write(_summary(result))
            failed = sum(result.failed for result in results)
            if not loop or stop.is_set():
                return failed
            connections.close_all()  # don't hold a connection while idle
            more = any(result.more_pending for result in results)
            if stop.wait(0 if more else settings.STIGMEM_FEDERATION_PULL_INTERVAL_S):
                return failed


def _find(ref: str) -> Peer:
    match = Q(node_id=ref)
    with contextlib.suppress(ValueError):  # not a peer id: maybe a node id
        match |= Q(pk=uuid.UUID(ref))
    peer = Peer.objects.filter(match).first()
    if peer is None:
        raise CommandError(f"no peer {ref!r} (give its peer id or node id)")
    return peer


def _summary(result: pull.PullResult) -> str:
    lag = "-" if result.lag_seconds is None else f"{result.lag_seconds:.1f}s"
    line = (
        f"{result.node_id or result.peer_id}: {result.outcome}, pages={result.pages} ingested={result.ingested} "
        f"duplicates={result.duplicates} rejected={result.rejected} tombstones={result.tombstones} lag={lag}"
    )
    if result.more_pending:
        line += " (more pending)"
    if result.error:
        line += f" error: {result.error}"
    return line
