"""The perf oracle's own parser, on text as `perf script -F pid,time,ip,sym,dso` prints it."""

from __future__ import annotations

from agent.analysis.goruntime import Category
from tests.support.perfstacks import parse_script

# perf right-aligns pids in a 7-wide field: a 4-digit pid's header starts with spaces.
SCRIPT = (
    "   9015   217.843666: \n"
    "\t          46a1c0 runtime.findRunnable+0x40 (/tmp/demo)\n"
    "\t          46b000 runtime.schedule+0x20 (/tmp/demo)\n"
    "\t    ffffffff81000000 do_syscall_64+0x10 ([kernel.kallsyms])\n"
    "\n"
    " 123456   218.000001: \n"
    "\t          4a0000 main.work+0x10 (/tmp/demo)\n"
    "\t          4a1000 main.main+0x10 (/tmp/demo)\n"
    "\n"
    "   9015   230.500000: \n"
    "\t          4a0000 main.work+0x10 (/tmp/demo)\n"
    "\n"
)


def test_parse_script_reads_padded_and_wide_pids() -> None:
    got = parse_script(SCRIPT)
    assert got == {9015: {Category.SCHEDULER: 1, Category.USER: 1}, 123456: {Category.USER: 1}}


def test_parse_script_keeps_only_the_window() -> None:
    got = parse_script(SCRIPT, (217.0, 220.0))
    assert got == {9015: {Category.SCHEDULER: 1}, 123456: {Category.USER: 1}}
