"""Deliver due webhook and wake events, for operators who run workers from cron or systemd."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandParser
from django.db import connections

from subscriptions import delivery


class Command(BaseCommand):
    help = "Deliver due subscription events once, or repeatedly with --loop."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", action="store_true", help="keep delivering until interrupted")
        parser.add_argument("--interval", type=float, default=1.0, help="seconds to wait when nothing is due")
        parser.add_argument("--budget", type=float, default=50.0, help="seconds one pass may take")

    def handle(self, *args, loop: bool, interval: float, budget: float, **options) -> None:
        while True:
            claimed = delivery.run_deliveries(budget)
            self.stdout.write(f"claimed {claimed} deliveries")
            if not loop:
                return
            if claimed == 0:
                connections.close_all()  # don't hold a connection while idle
                time.sleep(interval)
