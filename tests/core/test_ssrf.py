"""The SSRF guard: which webhook URLs and resolved addresses are refused, at create and connect time."""

from __future__ import annotations

import socket

import pytest

from stigmem import ssrf


def fake_dns(monkeypatch, answers: dict[str, list[str]]) -> list[str]:
    """Patch getaddrinfo: each host resolves to its listed addresses; unknown hosts fail. Returns the lookups."""
    lookups: list[str] = []

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        lookups.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        infos = []
        for address in answers[host]:
            if ":" in address:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return infos

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


@pytest.fixture
def guarded(settings):
    settings.STIGMEM_WEBHOOK_ALLOW_PRIVATE = False


PRIVATE_LITERALS = [
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://127.0.0.1:8080/hook",
    "http://0.0.0.0/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://100.64.0.1/hook",  # carrier-grade NAT
    "http://224.0.0.1/hook",  # multicast
    "http://240.0.0.1/hook",  # reserved
    "http://255.255.255.255/hook",
    "http://[::1]/hook",
    "http://[::]/hook",
    "http://[fd00::1]/hook",
    "http://[fe80::1]/hook",
    "http://[ff02::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:10.0.0.1]/hook",
    "http://[2002:7f00:1::]/hook",  # 6to4 wrapping 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 wrapping 169.254.169.254
]


@pytest.mark.parametrize("url", PRIVATE_LITERALS)
def test_non_public_ip_literals_are_refused_without_dns(guarded, monkeypatch, url):
    lookups = fake_dns(monkeypatch, {})
    with pytest.raises(ssrf.UnsafeUrl, match="not a public address"):
        ssrf.check_url(url)
    assert lookups == []


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "javascript:alert(1)", "gopher://a/"])
def test_other_schemes_are_refused(guarded, url):
    with pytest.raises(ssrf.UnsafeUrl, match="scheme"):
        ssrf.check_url(url)


@pytest.mark.parametrize("url", ["http://", "https:///path", "http://host:99999/", "http://[::1/"])
def test_malformed_urls_are_refused(guarded, url):
    with pytest.raises(ssrf.UnsafeUrl):
        ssrf.check_url(url)


def test_public_host_is_accepted(guarded, monkeypatch):
    lookups = fake_dns(monkeypatch, {"hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]})
    ssrf.check_url("https://hooks.example.com/in")
    assert lookups == ["hooks.example.com"]


def test_public_ip_literal_is_accepted(guarded, monkeypatch):
    fake_dns(monkeypatch, {})
    ssrf.check_url("https://8.8.8.8/hook")
    ssrf.check_url("https://[2001:4860:4860::8888]/hook")


@pytest.mark.parametrize(
    "answers",
    [["10.0.0.5"], ["127.0.0.1"], ["169.254.169.254"], ["::1"], ["fd00::7"], ["::ffff:127.0.0.1"]],
)
def test_hostnames_resolving_to_private_addresses_are_refused(guarded, monkeypatch, answers):
    fake_dns(monkeypatch, {"internal.example.com": answers})
    with pytest.raises(ssrf.UnsafeUrl, match="resolves to"):
        ssrf.check_url("https://internal.example.com/hook")


def test_one_private_record_among_public_ones_refuses_the_host(guarded, monkeypatch):
    fake_dns(monkeypatch, {"mixed.example.com": ["93.184.215.14", "10.0.0.1"]})
    with pytest.raises(ssrf.UnsafeUrl, match=r"10\.0\.0\.1"):
        ssrf.check_url("https://mixed.example.com/hook")


def test_unresolvable_host_is_refused(guarded, monkeypatch):
    fake_dns(monkeypatch, {})
    with pytest.raises(ssrf.UnsafeUrl, match="cannot resolve"):
        ssrf.check_url("https://nowhere.invalid/hook")


def test_allow_private_skips_the_address_rule_and_dns_but_not_the_scheme(settings, monkeypatch):
    settings.STIGMEM_WEBHOOK_ALLOW_PRIVATE = True
    lookups = fake_dns(monkeypatch, {})
    ssrf.check_url("http://127.0.0.1:9/hook")
    ssrf.check_url("http://receiver.local/hook")
    assert lookups == []
    with pytest.raises(ssrf.UnsafeUrl, match="scheme"):
        ssrf.check_url("file:///etc/passwd")


def test_resolve_pinned_returns_a_vetted_address(guarded, monkeypatch):
    fake_dns(monkeypatch, {"hooks.example.com": ["93.184.215.14"]})
    assert ssrf.resolve_pinned("hooks.example.com", 443) == "93.184.215.14"


def test_resolve_pinned_refuses_a_rebound_host(guarded, monkeypatch):
    # Public when the subscription was created, private when the delivery connects.
    answers = {"rebind.example.com": ["93.184.215.14"]}
    fake_dns(monkeypatch, answers)
    ssrf.check_url("https://rebind.example.com/hook")
    answers["rebind.example.com"] = ["127.0.0.1"]
    with pytest.raises(ssrf.UnsafeUrl, match=r"127\.0\.0\.1"):
        ssrf.resolve_pinned("rebind.example.com", 443)


def test_resolve_pinned_refuses_private_literals_and_unresolvable_hosts(guarded, monkeypatch):
    fake_dns(monkeypatch, {})
    with pytest.raises(ssrf.UnsafeUrl):
        ssrf.resolve_pinned("127.0.0.1", 80)
    with pytest.raises(ssrf.UnsafeUrl, match="cannot resolve"):
        ssrf.resolve_pinned("gone.example.com", 80)


def test_resolve_pinned_with_private_allowed_still_resolves(settings, monkeypatch):
    settings.STIGMEM_WEBHOOK_ALLOW_PRIVATE = True
    fake_dns(monkeypatch, {"localhost": ["127.0.0.1"]})
    assert ssrf.resolve_pinned("localhost", 8080) == "127.0.0.1"
    assert ssrf.resolve_pinned("::1", 8080) == "::1"
