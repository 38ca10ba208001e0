"""Read-time prompt-injection detection on ``string`` and ``text`` fact values (DESIGN.md §4).

The sanitizer only *reports*: it never rewrites a stored or returned value, because a record's
``cid`` must keep verifying against ``value.v``. It scans a normalized copy of the text (NFKC,
invisible, bidi and control characters removed) so that zero-width or full-width obfuscation
does not hide a phrase, and the read paths turn the verdict into ``sanitizer_warnings`` and,
in ``block`` mode, ``v: null`` with ``sanitizer_redacted: true``.

Built-in pattern names, reported in ``sanitizer_warnings`` (stable; clients may match on them):

``instruction_override``         "ignore / disregard / forget (all) previous instructions", ...
``mode_switch``                  "you are now in a new / different / developer mode"
``persona_override``             "act as an unfiltered / uncensored / evil assistant", "act as DAN"
``role_marker:system_prompt``    "system prompt:"
``role_marker:im_start``         ``<|im_start|>`` (ChatML)
``role_marker:im_end``           ``<|im_end|>`` (ChatML)
``role_marker:inst``             ``[INST]`` / ``[/INST]`` (Llama 2 / Mistral)
``role_marker:sys``              ``<<SYS>>`` / ``<</SYS>>`` (Llama 2)
``role_marker:chat_token``       other chat-template tokens: ``<|system|>``, ``<|user|>``, ``<|eot_id|>``, ...
``role_marker:human``            ``Human:`` starting a line or a sentence
``role_marker:assistant``        ``Assistant:`` starting a line or a sentence
``prototype_pollution:proto``    a quoted ``"__proto__"`` key
``prototype_pollution:constructor``  a quoted ``"constructor"`` key whose value is an object

Operator patterns from ``STIGMEM_SANITIZER_EXTRA_PATTERNS_FILE`` are reported as
``extra:<name>`` (see :func:`load_extra_patterns` for the file format).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# Text values are at most 64 KiB (stigmem.limits.MAX_TEXT_BYTES), so this bound never skips a
# stored value; it keeps one scan's cost fixed even if that limit grows.
MAX_SCAN_CHARS = 64 * 1024
SCANNED_TYPES = frozenset({"string", "text"})
SETTING = "STIGMEM_SANITIZER_EXTRA_PATTERNS_FILE"


@dataclass(frozen=True, slots=True)
class NamedPattern:
    name: str
    regex: re.Pattern[str]
    # Lowercase literals one of which every match contains: a cheap ``in`` test on the lowercased
    # text skips the regex for most values. Empty: always run the regex (operator patterns).
    needles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the read paths add to a fact record: ``sanitizer_warnings`` and ``sanitizer_redacted``."""

    warnings: list[str]
    redacted: bool


def _builtin(name: str, source: str, needles: tuple[str, ...], flags: int = re.IGNORECASE) -> NamedPattern:
    return NamedPattern(name, re.compile(source, flags), needles)


_OVERRIDE_VERBS = ("ignore", "disregard", "forget", "override")
# Every built-in pattern is a sequence of literals and single character-class runs, so a search
# is linear in the text (no nested or adjacent overlapping quantifiers that could backtrack).
BUILTIN_PATTERNS: tuple[NamedPattern, ...] = (
    _builtin(
        "instruction_override",
        r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+)?(?:of\s+)?(?:the\s+|your\s+|my\s+|these\s+)?"
        r"(?:previous|prior|above|earlier|preceding|former)\s+"
        r"(?:instructions?|prompts?|directions|directives|rules|guidelines|messages?|context)\b",
        _OVERRIDE_VERBS,
    ),
    _builtin(
        "instruction_override",
        r"\b(?:ignore|disregard|forget)\s+(?:all\s+)?(?:of\s+)?your\s+(?:instructions|system\s+prompt|programming)\b",
        _OVERRIDE_VERBS,
    ),
    _builtin(
        "mode_switch",
        r"\byou(?:\s+are|'re|\u2019re)\s+now\s+(?:in\s+)?(?:an?\s+)?"
        r"(?:different|new|developer|unrestricted|jailbroken|jailbreak|god)\s+mode\b",
        ("mode",),
    ),
    # DAN is matched case-sensitively: "act as Dan's guardian" is prose, "act as DAN" is the jailbreak.
    _builtin(
        "persona_override",
        r"\b(?:act|behave)\s+as\s+(?:an?\s+)?(?:evil|unfiltered|uncensored|unrestricted|jailbroken|(?-i:DAN))\b",
        ("act", "behave"),
    ),
    _builtin("role_marker:system_prompt", r"\bsystem\s+prompt\s*:", ("prompt",)),
    _builtin("role_marker:im_start", r"<\|\s*im_start\s*\|>", ("im_start",)),
    _builtin("role_marker:im_end", r"<\|\s*im_end\s*\|>", ("im_end",)),
    _builtin("role_marker:inst", r"\[\s*/?\s*INST\s*\]", ("inst",)),
    _builtin("role_marker:sys", r"<<\s*/?\s*SYS\s*>>", ("sys",)),
    _builtin(
        "role_marker:chat_token",
        r"<\|\s*(?:system|user|assistant|endoftext|eot_id|start_header_id|end_header_id|begin_of_text)\s*\|>",
        ("<|",),
    ),
    # A speaker label starts a line (after optional indentation or quote/list markers) or follows
    # the end of a sentence; "Executive assistant: Jane" and "human resources" are prose.
    _builtin("role_marker:human", r"(?:^|[.!?])[ \t>*_\-\"'`]*human\s*:", ("human",), re.IGNORECASE | re.MULTILINE),
    _builtin(
        "role_marker:assistant",
        r"(?:^|[.!?])[ \t>*_\-\"'`]*assistant\s*:",
        ("assistant",),
        re.IGNORECASE | re.MULTILINE,
    ),
    # Property names are case-sensitive in JavaScript, so these are too ("Constructor" is just data).
    _builtin("prototype_pollution:proto", r"[\"']__proto__[\"']\s*:", ("__proto__",), 0),
    _builtin("prototype_pollution:constructor", r"[\"']constructor[\"']\s*:\s*\{", ("constructor",), 0),
)

# --- normalization ------------------------------------------------------------------------------

_INVISIBLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x061C, 0x061C),  # Arabic letter mark (bidi)
    (0x115F, 0x1160),  # Hangul fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian variation selectors, vowel separator
    (0x200B, 0x200F),  # zero-width space / non-joiner / joiner, LRM, RLM
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, bidi isolates, deprecated format controls
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFEFF, 0xFEFF),  # zero-width no-break space / BOM
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xFFF9, 0xFFFB),  # interlinear annotation controls
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical format controls
    (0xE0000, 0xE007F),  # tag characters (their hidden ASCII payload is scanned separately)
    (0xE0100, 0xE01EF),  # variation selectors supplement
)
# Line breaks other than "\n" become "\n" rather than vanishing, so "Done.\rAssistant:" still has
# its speaker label at the start of a line and two words never fuse into one.
_LINE_BREAKS = "\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def _scan_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for first, last in (*_INVISIBLE_RANGES, (0x00, 0x1F), (0x7F, 0x9F)):
        table.update(dict.fromkeys(range(first, last + 1)))
    for keep in "\t\n":
        del table[ord(keep)]
    table.update({ord(c): "\n" for c in _LINE_BREAKS})
    return table


_SCAN_TABLE = _scan_table()
_NEEDS_TRANSLATION = re.compile(
    "["
    + "".join(
        f"{re.escape(chr(first))}-{re.escape(chr(last))}"
        for first, last in (*_INVISIBLE_RANGES, (0x00, 0x08), (0x0B, 0x1F), (0x7F, 0x9F))
    )
    + re.escape(_LINE_BREAKS)
    + "]"
)
# Unicode tag characters U+E0020-U+E007E invisibly spell ASCII ("ASCII smuggling"); a model can read them.
_TAG_RUN = re.compile("[\U000e0020-\U000e007e]+")


def normalized_for_scan(text: str) -> str:
    """The copy of ``text`` the patterns run on: NFKC, without invisible, bidi and control characters.

    Tabs and newlines stay; other line breaks (CR, VT, FF, NEL, U+2028/9) become newlines. The
    characters are removed before NFKC (so a combining sequence split by one still composes) and
    again after it (NFKC maps some compatibility characters onto removed ones).
    """
    if text.isascii():
        # NFKC is the identity on ASCII; only control characters can need removing.
        return text.translate(_SCAN_TABLE) if _NEEDS_TRANSLATION.search(text) else text
    text = unicodedata.normalize("NFKC", text.translate(_SCAN_TABLE))
    return text.translate(_SCAN_TABLE) if _NEEDS_TRANSLATION.search(text) else text


def _hidden_tag_text(text: str) -> str:
    return "\n".join("".join(chr(ord(c) - 0xE0000) for c in run) for run in _TAG_RUN.findall(text))


# --- patterns in force --------------------------------------------------------------------------

_active: tuple[NamedPattern, ...] = BUILTIN_PATTERNS
_active_needles: frozenset[str] = frozenset(n for pattern in BUILTIN_PATTERNS for n in pattern.needles)

_EXTRA_NAMED = re.compile(r"^([A-Za-z0-9_.-]+)\s+::(?:\s+(.*))?$")


def load_extra_patterns(path: str) -> list[NamedPattern]:
    """Read and compile an operator pattern file; raise ImproperlyConfigured on any problem.

    Format (UTF-8, one pattern per line): blank lines and lines whose first non-blank character
    is ``#`` are ignored; leading and trailing whitespace of a line is dropped. A line is either
    a bare regex, reported as ``extra:line<N>``, or ``NAME :: REGEX`` (NAME of ``A-Z a-z 0-9 _ . -``,
    ``::`` with whitespace on both sides), reported as ``extra:NAME``; ``::`` was chosen because
    ``name: regex`` cannot be told apart from a regex such as ``Human:\\s``. Patterns use Python
    ``re`` syntax, match case-insensitively (``(?-i:...)`` opts out) anywhere in the normalized
    text, and must not match the empty string (that would flag every value).
    """
    where = f"{SETTING} {path}"
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ImproperlyConfigured(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ImproperlyConfigured(f"{where}: cannot read the file: {exc.strerror or exc}") from exc

    patterns: list[NamedPattern] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        named = _EXTRA_NAMED.match(line)
        name, source = (named.group(1), named.group(2) or "") if named else (f"line{number}", line)
        if not source:
            raise ImproperlyConfigured(f"{where}: line {number}: pattern {name!r} has no regex after '::'")
        try:
            regex = re.compile(source, re.IGNORECASE)
        except re.error as exc:
            raise ImproperlyConfigured(f"{where}: line {number}: invalid regex {source!r}: {exc}") from exc
        if regex.search(""):
            raise ImproperlyConfigured(
                f"{where}: line {number}: regex {source!r} matches the empty string, so every value would be flagged"
            )
        patterns.append(NamedPattern(f"extra:{name}", regex))
    return patterns


def configure(path: str | None = None) -> tuple[NamedPattern, ...]:
    """Put the built-in patterns plus those of ``path`` in force; returns them.

    ``path`` defaults to ``settings.STIGMEM_SANITIZER_EXTRA_PATTERNS_FILE`` ("" = no extra file).
    Called once at start from ``StigmemConfig.ready()`` so that a bad file stops every entry
    point (runnode, gunicorn workers, manage.py commands) before anything is served.
    """
    global _active, _active_needles
    if path is None:
        path = settings.STIGMEM_SANITIZER_EXTRA_PATTERNS_FILE
    extra = load_extra_patterns(path) if path else []
    _active = (*BUILTIN_PATTERNS, *extra)
    _active_needles = frozenset(needle for pattern in _active for needle in pattern.needles)
    return _active


# --- scanning -----------------------------------------------------------------------------------


def scan(text: str) -> list[str]:
    """Names of the patterns in force that match ``text``: deduplicated, in pattern order."""
    head = text[:MAX_SCAN_CHARS]
    views = [normalized_for_scan(head)[:MAX_SCAN_CHARS]]
    if not head.isascii():
        hidden = _hidden_tag_text(head)
        if hidden:
            views.append(hidden)
    lowered = "\n".join(views).lower()
    present = {needle for needle in _active_needles if needle in lowered}
    names: list[str] = []
    for pattern in _active:
        if pattern.name in names or (pattern.needles and present.isdisjoint(pattern.needles)):
            continue
        if any(pattern.regex.search(view) for view in views):
            names.append(pattern.name)
    return names


def inspect(value_type: str, value_v: str) -> Verdict:
    """The sanitizer verdict for one fact value under the current ``STIGMEM_SANITIZER_MODE``.

    ``off``: never any warning. ``warn`` (default): the matched pattern names, never redacted.
    ``block``: the names, and ``redacted`` when anything matched (the caller then returns
    ``v: null``). Only ``string`` and ``text`` values are scanned; the value is never changed.
    """
    mode = settings.STIGMEM_SANITIZER_MODE
    if mode == "off" or value_type not in SCANNED_TYPES:
        return Verdict(warnings=[], redacted=False)
    warnings = scan(value_v)
    return Verdict(warnings=warnings, redacted=mode == "block" and bool(warnings))
