"""Tenant strings made safe for where they go: one module, one rule per destination.

A process name, cgroup directory, pod name, GOMAXPROCS literal, Go version string or
function name is whatever a tenant made it: bytes that are not UTF-8 (procfs keeps them
as surrogate escapes), control characters, terminal escape sequences, rich markup, ``;``
and newlines, megabytes. Each output path calls the function for its destination:

  label(s)            Prometheus label values: one bad value must never fail a scrape
  text(s)             JSON strings, log lines, terminal text (wrap in rich ``Text``: no markup)
  folded_frame(s)     one frame of a folded stack: no ``;`` or newline to forge frames or records
  path_segment(s)     one segment of a URL path that the HTTP server maps back with from_path_segment
  filename(s)         a file name made of [A-Za-z0-9_.-]
  utf8(s)             valid UTF-8 and nothing else changed (protobuf strings, e.g. pprof's table)

``text`` is the base: valid UTF-8, every control, format, surrogate, private-use,
unassigned or line/paragraph-separator character escaped as ``\\n``, ``\\xNN`` (a byte
that was not UTF-8, or a C0/C1 control), ``\\uNNNN``; then capped (escapes count) with "…".
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import quote, unquote

MAX_LABEL = 256  # Kubernetes names are at most 253 characters
MAX_TEXT = 4096  # paths (PATH_MAX), explanations
MAX_FRAME = 1024

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_ELLIPSIS = "…"


def _escape(c: str) -> str:
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # surrogateescape: the byte o - 0xDC00 was not UTF-8
        return f"\\x{o - 0xDC00:02x}"
    if c in _NAMED:
        return _NAMED[c]
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def _cap(s: str, limit: int) -> str:
    return s if len(s) <= limit else s[: max(0, limit - 1)] + _ELLIPSIS


def text(value: str | bytes | None, limit: int = MAX_TEXT) -> str:
    """Printable, valid UTF-8, at most ``limit`` characters; see the module docstring."""
    if value is None:
        return ""
    s = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
    if s.isascii() and s.isprintable():  # the common case: nothing to escape
        return _cap(s, limit)
    out: list[str] = []
    size = 0
    for c in s:
        piece = _escape(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c
        out.append(piece)
        size += len(piece)
        if size > limit:
            break
    return _cap("".join(out), limit)


def label(value: str | bytes | None) -> str:
    """A Prometheus label value (the exposition escapes ``\\``, ``"`` itself; it cannot encode surrogates)."""
    return text(value, MAX_LABEL)


_FOLDED_SEPARATORS = re.compile(r";")


def folded_frame(value: str | bytes | None) -> str:
    """One frame of Brendan Gregg's folded format (``a;b;c COUNT``).

    ``;`` separates frames and a newline ends a record, so both are escaped; spaces stay
    (Go and C++ names have them: ``interface {}``) because every reader takes the count after
    the LAST space of a line.
    """
    return _FOLDED_SEPARATORS.sub(r"\\x3b", text(value, MAX_FRAME))


_EMPTY_SEGMENT = "-"


def path_segment(value: str) -> str:
    """One URL path segment for ``value`` ("" -> "-"): everything but [A-Za-z0-9_.~-] percent-encoded
    ("/", "?", "#", "%" included), and the segments "-" (the empty marker), "." and ".." (which clients
    collapse) fully encoded. ``value`` should already be a label (valid UTF-8)."""
    if value == "":
        return _EMPTY_SEGMENT
    seg = quote(utf8(value), safe="")
    if seg in (_EMPTY_SEGMENT, ".", ".."):
        return "".join(f"%{ord(c):02X}" for c in seg)
    return seg


def from_path_segment(raw: str) -> str:
    """The inverse of :func:`path_segment`, for a segment as it appears in the request path."""
    return "" if raw == _EMPTY_SEGMENT else unquote(raw, errors="replace")


_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def filename(value: str, default: str = "process", limit: int = 100) -> str:
    """A file name: runs of anything but [A-Za-z0-9_.-] become "_" (never "", ".", ".." or a path)."""
    name = _FILENAME_UNSAFE.sub("_", value).strip("_.")[:limit]
    return name or default


_SURROGATE = re.compile("[\ud800-\udfff]")


def utf8(value: str) -> str:
    """``value`` with surrogates (bytes that were not UTF-8) replaced by U+FFFD, nothing else changed."""
    if value.isascii():
        return value
    return _SURROGATE.sub("\ufffd", value)


def json_tree(value: Any) -> Any:
    """A JSON-ready tree with every string (keys too) passed through :func:`text`."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {text(str(k), MAX_LABEL): json_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_tree(v) for v in value]
    return value
