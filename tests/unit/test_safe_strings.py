"""agent/export/safe.py and every output path that uses it, checked by their consumers.

Oracles: promtool and prometheus_client's parser for the exposition, json for JSON,
the rendered terminal text for the table (no ESC byte, markup shown literally), the
folded-stack rule every reader uses (frames split on ";", count after the last space),
and curl (which collapses "." and ".." segments) against the real HTTP server.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import unicodedata
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.analysis.attribution import ProcessProfile
from agent.analysis.goruntime import Category
from agent.analysis.model import GoProcessReport, OtherSummary, ScanResult
from agent.analysis.verdict import Verdict
from agent.export import safe
from agent.export.http import AgentHTTPServer, Health, ProfileAccess, ProfileStore
from agent.export.metrics import AgentMetrics
from agent.export.pprof import ProfilePart, build_profile, parse_profile
from agent.export.report import render_table, to_json, write_folded
from agent.gobinary.pclntab import Frame
from tests.support.capabilities import need

HOSTILE = [
    "[/x]",  # rich markup that crashed the scan table
    "[bold red]boom[/]",
    "\x1b[2J\x1b[31mred",  # terminal escapes
    "name\nforged_series 1",  # newline
    "semi;colon frame",
    "bad\udcff\udcfeutf8",  # procfs keeps non-UTF-8 bytes as surrogate escapes
    "rtl\u202eevil",  # bidi override
    "zero\u200bwidth",
    'quote"back\\slash',
    "x" * 10_000,
    "",
    "-",
    ".",
    "..",
    "a/b?c#d%e",
]
SHARES = {Category.SCHEDULER: 0.5, Category.GC: 0.1, Category.RUNTIME_OTHER: 0.1, Category.USER: 0.3}


def _unsafe(s: str) -> list[str]:
    return [c for c in s if unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_text_is_printable_utf8_and_capped(value: str) -> None:
    out = safe.text(value, 64)
    out.encode("utf-8")  # no surrogate left
    assert not _unsafe(out) and len(out) <= 64


def test_text_escapes_are_readable() -> None:
    assert safe.text("a\nb\tc\x1b\x7f") == "a\\nb\\tc\\x1b\\x7f"
    assert safe.text(b"caf\xc3\xa9 \xff") == "café \\xff"  # valid UTF-8 kept, the bad byte named
    assert safe.text("bad\udcffbyte") == "bad\\xffbyte"
    assert safe.text("rtl\u202e") == "rtl\\u202e"
    assert safe.text("ok name-1.2_3") == "ok name-1.2_3"
    assert safe.text("x" * 10, 5) == "xxxx…"


def test_utf8_only_replaces_surrogates() -> None:
    assert safe.utf8("a\udcffb\nc\x1b") == "a\ufffdb\nc\x1b"


def _row(name: str, *, pod: str | None = None, go_version: str = "go1.22.1", fn: str = "main.f") -> GoProcessReport:
    prof = ProcessProfile(samples=10)
    prof.stacks[(0x1000, 0x2000)] = 10
    prof.locations[0x1000] = (Frame(fn, "/src/x.go", 3),)
    prof.locations[0x2000] = (Frame("main.main", "/src/x.go", 9),)
    prof.categories[Category.USER] = 10
    return GoProcessReport(
        pid=4242,
        start_time=1,
        exe="/bin/" + name,
        go_version=go_version,
        cgroup="/" + name,
        workload=name,
        namespace="ns" if pod else None,
        pod=pod,
        container=name if pod else None,
        owner=None,
        cpu_limit_cores=1.0,
        affinity_cpus=4,
        gomaxprocs=64,
        gomaxprocs_source="live",
        samples=10,
        cpu_seconds=0.1,
        shares=SHARES,
        throttled_ratio=None,
        verdict=Verdict.ABOVE,
        recommended_gomaxprocs=2,
        explanation=f"GOMAXPROCS=64; the pod spec sets GOMAXPROCS={name}",
        fix=f"set it to 2 ({name})",
        profile=prof,
        errors=[f"pid 4242 ({name}): oops"],
    )


def _result(rows: list[GoProcessReport]) -> ScanResult:
    other = OtherSummary(processes=1, samples=5, top=[(name, 1) for name in HOSTILE[:6]])
    return ScanResult(
        duration_s=1.0,
        frequency_hz=97,
        busy_samples=10,
        go=rows,
        other=other,
        lost={},
        errors=[f"pid 1 ({n})" for n in HOSTILE[:6]],
    )


def _promtool_check(exposition: bytes) -> None:
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool (apt-get install prometheus; run scripts/setup.sh)")
    assert promtool is not None
    cmd = [promtool, "check", "metrics"]
    done = subprocess.run(cmd, check=False, input=exposition, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr  # it says "invalid label value" for a raw \xff


def test_non_utf8_comm_never_fails_a_scrape() -> None:
    # The attack: one process with a non-UTF-8 comm in the root cgroup made every scrape fail.
    m = AgentMetrics()
    reg = CollectorRegistry()
    reg.register(m)
    honest = _row("api", pod="api-0")
    m.update([_row(name, go_version=f"go1.2\x1b[0m{name}") for name in HOSTILE] + [honest], now=1)
    m.set_bpf(False, "reason with \udcff and \n")
    body = generate_latest(reg)  # before: UnicodeEncodeError
    families = {f.name: f for f in text_string_to_metric_families(body.decode("utf-8"))}
    values = {s.labels["container"] for s in families["node_agent_go_gomaxprocs"].samples}
    assert all(not _unsafe(v) and len(v) <= safe.MAX_LABEL for v in values)
    assert "bad\\xff\\xfeutf8" in values and "[/x]" in values
    lbl = {"namespace": "ns", "pod": "api-0", "container": "api"}
    assert reg.get_sample_value("node_agent_go_gomaxprocs", lbl) == 64  # the honest one next to them
    _promtool_check(body)


def test_rich_markup_and_escapes_in_names_reach_the_terminal_as_text() -> None:
    out = io.StringIO()
    render_table(_result([_row(n) for n in HOSTILE[:10]]), out, width=400)  # before: MarkupError on "[/x]"
    text = out.getvalue()
    assert "\x1b" not in text and "\u202e" not in text and "\udcff" not in text
    assert "[/x]" in text and "[bold red]boom[/]" in text  # shown, not interpreted
    assert "\\x1b[2J" in text


def test_json_output_is_valid_utf8_and_escaped() -> None:
    rows = to_json(_result([_row(n) for n in HOSTILE]))
    data = json.dumps(rows, ensure_ascii=False).encode("utf-8")  # no surrogate survives
    back = json.loads(data)
    for r in back:
        for key in ("workload", "exe", "cgroup", "explanation", "fix", "go_version"):
            assert not _unsafe(r[key] or ""), (key, r[key])


def _folded_records(text: str) -> list[tuple[list[str], int]]:
    """How flamegraph.pl/inferno/speedscope read folded stacks: count after the last space."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        out.append((stack.split(";"), int(count)))
    return out


def test_function_name_with_newline_or_semicolon_cannot_forge_folded_records() -> None:
    forged = "main.evil\nroot;forged;victim 999999"
    rows = [_row("evil", fn=forged), _row("semi;colon", fn="a;b c"), _row("honest", fn="main.handle")]
    out = io.StringIO()
    write_folded(_result(rows), out)
    records = _folded_records(out.getvalue())
    assert len(records) == 3 and sorted(n for _, n in records) == [10, 10, 10]
    frames = {r[0][0]: r[0] for r in records}
    assert frames["evil"] == ["evil", "pid 4242", "main.main", "main.evil\\nroot\\x3bforged\\x3bvictim 999999"]
    assert frames["semi\\x3bcolon"][-1] == "a\\x3bb c"
    assert frames["honest"][-1] == "main.handle"


def test_pprof_strings_are_valid_utf8() -> None:
    part = ProfilePart(_row("x", fn="f\udcff").profile, "/bin/\udcfe", "id")
    msg = build_profile([part], period_ns=1, duration_ns=1, labels={"container": "c\udcff"})
    back = parse_profile(msg.SerializeToString())
    assert "f\ufffd" in back.string_table and "/bin/\ufffd" in back.string_table


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_path_segment_round_trips(value: str) -> None:
    label = safe.label(value)
    seg = safe.path_segment(label)
    assert "/" not in seg and seg not in {".", ".."} and seg
    assert safe.from_path_segment(seg) == label


def test_every_listed_profile_path_is_fetchable(tmp_path: Path) -> None:
    store = ProfileStore()
    keys = [(safe.label(ns), safe.label(pod), safe.label(c)) for ns, pod, c in [("", "", n) for n in HOSTILE]]
    keys += [("shop", "web-1", "app"), ("..", ".", "-"), ("-", "", "x")]
    store.replace({k: f"profile {i}".encode() for i, k in enumerate(keys)})
    health = Health()
    server = AgentHTTPServer(
        [("127.0.0.1", 0)],
        CollectorRegistry(),
        health=health.alive,
        ready=health.ready,
        profiles=store,
        access=ProfileAccess(enabled=True),
    )
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/profiles", timeout=10) as resp:
            listing = json.loads(resp.read())
        assert len(listing) == len(set(keys))
        curl = shutil.which("curl")
        for entry in listing:
            want = store.get((entry["namespace"], entry["pod"], entry["container"]))
            with urllib.request.urlopen(base + entry["path"], timeout=10) as resp:
                assert resp.read() == want, entry
            if curl:  # curl normalizes the path as browsers do
                got = subprocess.run([curl, "-sf", base + entry["path"]], check=False, capture_output=True, timeout=30)
                assert got.returncode == 0 and got.stdout == want, entry
    finally:
        server.stop()
