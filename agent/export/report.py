"""Render a scan: a rich table for people, JSON for tools, folded stacks, pprof files.

Every string a tenant controls (names, paths, versions, function names, the spec's
GOMAXPROCS text inside explanations) goes through agent.export.safe for its destination;
the terminal gets rich ``Text`` objects, never markup.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.analysis.goruntime import Category
from agent.analysis.model import GoProcessReport, ScanResult
from agent.analysis.verdict import MISCONFIGURED, Verdict
from agent.export import safe
from agent.export.pprof import ProfilePart, build_profile, write_profile

_VERDICT_STYLE = {
    Verdict.ABOVE: "bold red",
    Verdict.BELOW: "bold yellow",
    Verdict.NO_LIMIT: "dim",
    Verdict.OK: "green",
    Verdict.UNKNOWN: "magenta",
}


def worst_first(rows: list[GoProcessReport]) -> list[GoProcessReport]:
    """Flagged processes first, then by runtime overhead (CPU-weighted)."""
    return sorted(
        rows,
        key=lambda r: (r.verdict not in MISCONFIGURED, -(r.runtime_share * r.cpu_seconds), -r.cpu_seconds, r.pid),
    )


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _cell(value: str | None, limit: int = 80) -> Text:
    """A table cell from a tenant's string: escaped, capped, and a Text so rich reads no markup."""
    return Text(safe.text(value, limit))


def render_table(result: ScanResult, out: TextIO, *, width: int | None = None) -> None:
    console = Console(file=out, width=width or 160, highlight=False, soft_wrap=False)
    title = (
        f"node-agent scan: {len(result.go)} Go process(es), {result.duration_s:.0f}s at {result.frequency_hz} Hz, "
        f"{result.busy_samples} samples"
    )
    table = Table(title=title, title_justify="left", show_lines=False)
    for col, justify in [
        ("workload", "left"),
        ("pid", "right"),
        ("go", "left"),
        ("limit", "right"),
        ("GOMAXPROCS", "right"),
        ("source", "left"),
        ("cpu s", "right"),
        ("sched", "right"),
        ("gc", "right"),
        ("rt other", "right"),
        ("user", "right"),
        ("throttled", "right"),
        ("verdict", "left"),
        ("rec.", "right"),
    ]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    rows = worst_first(result.go)
    for r in rows:
        table.add_row(
            _cell(r.workload),
            str(r.pid),
            _cell((r.go_version or "?").removeprefix("go"), 24),
            "none" if r.cpu_limit_cores is None else f"{r.cpu_limit_cores:g}",
            "?" if r.gomaxprocs is None else str(r.gomaxprocs),
            _cell(r.gomaxprocs_source),
            f"{r.cpu_seconds:.2f}",
            _pct(r.shares.get(Category.SCHEDULER, 0.0)),
            _pct(r.shares.get(Category.GC, 0.0)),
            _pct(r.shares.get(Category.RUNTIME_OTHER, 0.0)),
            _pct(r.shares.get(Category.USER, 0.0)),
            "-" if r.throttled_ratio is None else _pct(r.throttled_ratio),
            Text(str(r.verdict), style=_VERDICT_STYLE[r.verdict]),
            "-" if r.recommended_gomaxprocs is None else str(r.recommended_gomaxprocs),
        )
    if rows:
        console.print(table)
    else:
        console.print("No Go process used CPU during the scan.")
    for r in rows:
        if r.verdict in MISCONFIGURED or r.verdict == Verdict.UNKNOWN:
            console.print(Text(f"{safe.text(r.workload, 200)} (pid {r.pid}): ", style="bold"), end="")
            console.print(_cell(r.explanation, safe.MAX_TEXT))
            if r.fix:
                console.print(Text("  fix: ") + _cell(r.fix, safe.MAX_TEXT))
    other = result.other
    if other.samples:
        busiest = ", ".join(f"{safe.text(comm, 64)} ({n})" for comm, n in other.top[:5])
        console.print(Text(f"Non-Go: {other.processes} process(es), {other.samples} samples; busiest: {busiest}"))
    lost = {k: v for k, v in result.lost.items() if v}
    if lost or result.exited_samples:
        console.print(f"Lost samples: {lost or 'none'}; from processes that exited: {result.exited_samples}")
    for err in result.errors:
        console.print(Text("warning: ", style="yellow") + _cell(err, safe.MAX_TEXT))


def to_json(result: ScanResult) -> list[dict[str, Any]]:
    window = {"start_monotonic": round(result.window[0], 6), "end_monotonic": round(result.window[1], 6)}
    return [safe.json_tree({**r.to_json(), "window": window}) for r in worst_first(result.go)]


def write_json(result: ScanResult, out: TextIO) -> None:
    json.dump(to_json(result), out, indent=2)
    out.write("\n")


def write_pprof(result: ScanResult, directory: Path) -> list[Path]:
    """One gzipped profile per Go process; labels carry pod/container."""
    directory.mkdir(parents=True, exist_ok=True)
    period_ns = round(1e9 / result.frequency_hz)
    written = []
    for r in worst_first(result.go):
        if not r.profile.samples:
            continue
        labels = {
            "namespace": r.namespace or "",
            "pod": r.pod or "",
            "container": r.container or "",
            "cgroup": r.cgroup,
            "pid": str(r.pid),
        }
        prof = build_profile(
            [ProfilePart(r.profile, r.exe, r.build_id)],
            period_ns=period_ns,
            duration_ns=round(result.duration_s * 1e9),
            labels=labels,
        )
        path = directory / f"{safe.filename(r.workload)}-{r.pid}.pb.gz"
        write_profile(str(path), prof)
        written.append(path)
    return written


def folded_stacks(r: GoProcessReport) -> Counter[str]:
    """One process's stacks as folded lines (root first), every frame made safe to fold."""
    out: Counter[str] = Counter()
    for stack, n in r.profile.resolve().stacks.items():  # stacks are symbolized when first asked for
        out[";".join(safe.folded_frame(f.function) for f in reversed(r.profile.frames_of(stack)))] += n
    return out


def write_folded(result: ScanResult, out: TextIO) -> None:
    """Folded stacks, prefixed by workload and pid so one file holds them all."""
    for r in worst_first(result.go):
        prefix = f"{safe.folded_frame(r.workload)};pid {r.pid}"
        for stack, n in sorted(folded_stacks(r).items()):
            out.write(f"{prefix};{stack} {n}\n")
