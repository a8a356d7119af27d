"""`--log-format json`: one JSON object per line, whatever the message or traceback holds."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from agent.logsetup import configure_logging

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def records(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.usefixtures("restore_root_logger")
def test_json_lines_carry_time_level_message_and_fields() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = logging.getLogger("node_agent")
    log.debug("not shown at info")
    log.warning("cycle %d took %.1fs", 7, 2.5, extra={"pid": 4242, "exe": Path("/usr/bin/app")})
    (rec,) = records(out.getvalue())
    assert rec["level"] == "warning" and rec["logger"] == "node_agent"
    assert rec["message"] == "cycle 7 took 2.5s"
    assert rec["fields"] == {"pid": 4242, "exe": "/usr/bin/app"}
    assert isinstance(rec["time"], str)
    assert datetime.fromisoformat(rec["time"]).utcoffset() is not None  # an absolute time


@pytest.mark.usefixtures("restore_root_logger")
def test_traceback_and_newline_injection_stay_inside_one_line() -> None:
    """A process name with a newline (attacker-chosen) must not forge a second record."""
    out = io.StringIO()
    configure_logging("debug", "json", out)
    log = logging.getLogger("node_agent")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("profile of %s failed", 'evil\n{"level": "info", "message": "forged"}')
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    (rec,) = records(out.getvalue())
    assert rec["level"] == "error"
    assert rec["message"] == 'profile of evil\n{"level": "info", "message": "forged"} failed'
    assert isinstance(rec["exception"], str)
    assert rec["exception"].startswith("Traceback (most recent call last):")
    assert rec["exception"].endswith("ValueError: bad\nthing")


@pytest.mark.usefixtures("restore_root_logger")
def test_text_format_is_the_default_shape() -> None:
    out = io.StringIO()
    configure_logging("warning", "text", out)
    logging.getLogger("node_agent").info("hidden")
    logging.getLogger("node_agent").error("BPF sampler unavailable")
    line = out.getvalue()
    assert line.count("\n") == 1
    assert line.rstrip().endswith("ERROR node_agent: BPF sampler unavailable")
