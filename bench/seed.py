"""Seed a bench node's database with N facts through the node's own write path.

Run by ``bench/run.py`` as a subprocess with the node's environment (``STIGMEM_DATA_DIR`` /
``DATABASE_URL``), like ``manage.py shell`` would: every chunk of 1000 facts goes through
``parse_fact_body`` (validation, normalization, CID) and one ``assert_facts`` call, exactly as
a ``POST /v1/facts/batch`` of 1000 facts does, minus HTTP and JSON. Prints one ``SEEDJSON``
line with the figures.

    python bench/seed.py --facts 1000000 [--chunk 1000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stigmem.settings")

import django  # noqa: E402

django.setup()
# django-q2 logs every enqueued task (the write path kicks the log consumers once per chunk).
logging.getLogger("django-q").setLevel(logging.WARNING)

import workload  # noqa: E402
from django.conf import settings  # noqa: E402

from stigmem.fact_input import parse_fact_body  # noqa: E402
from stigmem.facts import assert_facts  # noqa: E402
from stigmem.models import Fact  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, required=True)
    parser.add_argument("--chunk", type=int, default=1000)
    args = parser.parse_args()

    tenant = settings.STIGMEM_DEFAULT_TENANT
    entities = max(1, args.facts // workload.FACTS_PER_ENTITY)
    total = entities * workload.FACTS_PER_ENTITY
    started = time.perf_counter()
    chunk: list = []
    written = 0
    next_report = 100_000
    for n, j in workload.seed_order(entities):
        chunk.append(parse_fact_body(workload.seed_fact(n, j)))
        if len(chunk) == args.chunk:
            written += sum(o.created for o in assert_facts(tenant, chunk))
            chunk = []
            if written >= next_report:
                elapsed = time.perf_counter() - started
                print(f"  seeded {written:>9,} facts  {written / elapsed:8,.0f} facts/s", flush=True)
                next_report += 100_000
    if chunk:
        written += sum(o.created for o in assert_facts(tenant, chunk))
    elapsed = time.perf_counter() - started
    stored = Fact.objects.filter(tenant=tenant).count()
    result = {
        "facts": total,
        "created": written,
        "stored": stored,
        "entities": entities,
        "seconds": elapsed,
        "facts_per_s": written / elapsed if elapsed else 0.0,
        "via": f"assert_facts (in-process, chunks of {args.chunk})",
    }
    print("SEEDJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
