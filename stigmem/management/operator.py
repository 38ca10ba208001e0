"""Who runs a management command, as the actor of the audit rows it writes."""

from __future__ import annotations

import getpass


def cli_operator() -> str:
    """``cli:<login name>`` of the process running the command."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        user = "unknown"
    return f"cli:{user}"
