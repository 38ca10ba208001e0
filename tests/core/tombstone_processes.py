"""Node processes racing on first use of the signing key and on one tombstone (a SQLite file).

``python -m tests.core.tombstone_processes migrate <dir>`` creates the database under ``<dir>``;
``python -m tests.core.tombstone_processes race <dir> <go-file>`` prints ``ready``, waits until
``<go-file>`` exists, then loads the node's public key and creates the same tombstone as its
rivals, and prints one JSON line with what it got. Run by ``test_tombstones.py``: pytest-django's
in-memory SQLite database cannot be shared between processes.
"""

from __future__ import annotations

import json
import os
import sys
import time

WAIT_S = 120
ENTITY = "stigmem://race/user/erin"


def _setup(data_dir: str) -> None:
    for name in ("DATABASE_URL", "STIGMEM_NODE_SIGNING_KEY", "STIGMEM_NODE_ID"):
        os.environ.pop(name, None)
    os.environ["STIGMEM_DATA_DIR"] = data_dir
    os.environ["STIGMEM_DB_PATH"] = os.path.join(data_dir, "stigmem.db")
    os.environ["DJANGO_SETTINGS_MODULE"] = "stigmem.settings"
    import django

    django.setup()


def migrate(data_dir: str) -> int:
    _setup(data_dir)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return 0


def race(data_dir: str, go_file: str) -> int:
    _setup(data_dir)
    from django.db import connection

    from stigmem import signing
    from stigmem.tombstones import create_tombstone

    connection.ensure_connection()
    print("ready", flush=True)
    deadline = time.monotonic() + WAIT_S
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            raise SystemExit("the go file never appeared")
        time.sleep(0.005)
    public = signing.public_key_b64()
    tombstone, created = create_tombstone(
        tenant="default", entity_uri=ENTITY, scope="*", reason="race", actor="stigmem://race/agent/admin"
    )
    print(json.dumps({"public_key": public, "tombstone_id": tombstone.id, "created": created}), flush=True)
    return 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    sys.exit({"migrate": migrate, "race": race}[command](*args))
