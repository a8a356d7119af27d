"""benchmarks/bench_scrape.py runs and its bodies round-trip (figures are in the README, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_scrape_benchmark_runs_and_measures_5000_series() -> None:
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_scrape.py"), "--rounds", "1", "--scrapes", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] is True
    assert 5000 <= out["series"] < 5100
    rows = {r["format"]: r for r in out["rows"]}
    assert rows["text + gzip"]["bytes"] < rows["text (anchor)"]["bytes"] / 4
