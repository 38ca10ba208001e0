"""``manage.py decay_sweep``: options, summary line, exit codes, the progress bar on a terminal only."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from decay.sweep import _acquire, _release
from tests.decay.api_helpers import expired_count, seed, snapshot

SUMMARY = re.compile(r"^scanned=(\d+) decayed=(\d+) dry_run=(true|false) tenant=(\S+) time=\d+\.\d\ds$")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(*args: str, stderr=None) -> tuple[str, str]:
    out, err = io.StringIO(), stderr if stderr is not None else io.StringIO()
    call_command("decay_sweep", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def summary(out: str) -> tuple:
    [line] = out.splitlines()
    match = SUMMARY.match(line)
    assert match, line
    return int(match[1]), int(match[2]), match[3], match[4]


def test_sweep_of_the_default_tenant(db):
    seed("default", count=3)
    seed("acme", count=2)
    out, err = run("--ttl-seconds", "0")
    assert summary(out) == (3, 3, "false", "default")
    assert err == ""  # not a terminal: no progress bar
    assert (expired_count("default"), expired_count("acme")) == (3, 0)


def test_tenant_scope_and_dry_run(db):
    seed("acme", count=2, scope="team")
    seed("acme", count=1, scope="company", prefix="c")
    before = snapshot()[0]
    out, _ = run("--tenant", "acme", "--scope", "team", "--ttl-seconds", "0", "--dry-run")
    assert summary(out) == (2, 0, "true", "acme")
    assert snapshot()[0] == before
    out, _ = run("--tenant", "acme", "--scope", "team", "--ttl-seconds", "0")
    assert summary(out) == (2, 2, "false", "acme")


def test_confidence_floor(db):
    seed(count=2, confidence=0.2)
    seed(count=2, confidence=0.8, prefix="hi")
    out, _ = run("--min-confidence", "0.5")
    assert summary(out) == (2, 2, "false", "default")


def test_progress_bar_on_a_terminal(db, settings):
    settings.STIGMEM_DECAY_CHUNK = 2
    seed(count=5)
    terminal = Terminal()
    out, err = run("--ttl-seconds", "0", stderr=terminal)
    assert summary(out) == (5, 5, "false", "default")
    frames = err.rstrip("\n").split("\r")[1:]
    assert len(frames) >= 3  # one per chunk and the final one
    assert all(re.fullmatch(r"\[[#.]{40}\] +\d+\.\d%", frame) for frame in frames)
    assert frames[-1] == "[" + "#" * 40 + "] 100.0%"
    assert err.endswith("\n")  # the summary starts on a fresh line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ttl-seconds", "-1"], "--ttl-seconds: ttl_seconds must be from 0 to"),
        (["--ttl-seconds", "soon"], "--ttl-seconds: Input should be a valid integer"),
        (["--min-confidence", "2"], "--min-confidence: min_confidence must be a number from 0 to 1"),
        (["--min-confidence", "x"], "--min-confidence: Input should be a valid number"),
        (["--scope", "galaxy"], "--scope: scope must be one of local, team, company, public"),
        (["--tenant", "t" * 65], "--tenant must be at most 64 characters"),
    ],
)
def test_bad_options_exit_1_and_change_nothing(db, args, message):
    seed(count=2)
    before = snapshot()
    with pytest.raises(CommandError) as raised:
        run(*args)
    assert raised.value.returncode == 1
    assert str(raised.value).startswith(message)
    assert snapshot() == before


def test_another_sweep_running_exits_2(db):
    seed(count=2)
    _acquire("default", "another-process")
    try:
        with pytest.raises(CommandError) as raised:
            run("--ttl-seconds", "0")
        assert raised.value.returncode == 2
        assert str(raised.value) == "a decay sweep of this tenant is already running (tenant default)"
        assert expired_count() == 0
    finally:
        _release("default", "another-process")


def test_a_failing_sweep_exits_1(db, monkeypatch):
    from decay.management.commands import decay_sweep

    def broken(*args, **kwargs):
        raise RuntimeError("database gone")

    monkeypatch.setattr(decay_sweep, "run_sweep", broken)
    with pytest.raises(CommandError) as raised:
        run("--ttl-seconds", "0")
    assert raised.value.returncode == 1
    assert str(raised.value) == "sweep failed: RuntimeError: database gone"


def test_without_rules_the_policies_apply(db):
    from decay.models import DecayPolicy

    seed(count=2)
    out, _ = run()
    assert summary(out) == (0, 0, "false", "default")
    DecayPolicy.objects.create(tenant="default", name="all", ttl_seconds=0)
    out, _ = run()
    assert summary(out) == (2, 2, "false", "default")


@pytest.mark.parametrize(
    ("args", "code"), [(["--ttl-seconds", "0"], 0), (["--scope", "x"], 1), (["--min-confidence", "9"], 1)]
)
def test_process_exit_codes(db, monkeypatch, capsys, args, code):
    """What cron sees: ``manage.py decay_sweep`` exits 0, 1 or 2 (run in-process, as manage.py does)."""
    from django.core.management import execute_from_command_line
    from django.db import connections

    # manage.py closes every connection on the way out; here that is the test's own transaction.
    monkeypatch.setattr(connections, "close_all", lambda: None)
    seed(count=1)
    if code == 0:
        execute_from_command_line(["manage.py", "decay_sweep", *args])
        assert summary(capsys.readouterr().out)[:2] == (1, 1)
        return
    with pytest.raises(SystemExit) as raised:
        execute_from_command_line(["manage.py", "decay_sweep", *args])
    assert raised.value.code == code
    assert capsys.readouterr().err.startswith("CommandError: ")


def test_process_exit_code_2_when_busy(db, monkeypatch, capsys):
    from django.core.management import execute_from_command_line
    from django.db import connections

    monkeypatch.setattr(connections, "close_all", lambda: None)
    seed(count=1)
    _acquire("default", "another-process")
    try:
        with pytest.raises(SystemExit) as raised:
            execute_from_command_line(["manage.py", "decay_sweep", "--ttl-seconds", "0"])
        assert raised.value.code == 2
    finally:
        _release("default", "another-process")
