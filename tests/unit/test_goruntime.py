"""Category rules over inline-expanded stacks (leaf first)."""

from __future__ import annotations

import pytest

from agent.analysis.goruntime import Category, classify, package_of, runtime_share, shares

S, G, R, U = Category.SCHEDULER, Category.GC, Category.RUNTIME_OTHER, Category.USER


@pytest.mark.parametrize(
    ("stack", "expected"),
    [
        (
            [
                "runtime.futex",
                "runtime.futexsleep",
                "runtime.notesleep",
                "runtime.stopm",
                "runtime.findRunnable",
                "runtime.schedule",
                "runtime.park_m",
                "runtime.mcall",
            ],
            S,
        ),
        (["runtime.runqsteal", "runtime.stealWork", "runtime.findRunnable", "runtime.schedule"], S),
        (["runtime.findrunnable", "runtime.schedule"], S),  # Go <= 1.20 spelling
        (["runtime.schedule", "runtime.goschedImpl"], S),
        (
            [
                "runtime.scanobject",
                "runtime.gcDrain",
                "runtime.gcBgMarkWorker.func2",
                "runtime.systemstack",
                "runtime.gcBgMarkWorker",
                "runtime.goexit",
            ],
            G,
        ),
        (
            [
                "runtime.scanobject",
                "runtime.gcDrainN",
                "runtime.gcAssistAlloc1",
                "runtime.gcAssistAlloc.func1",
                "runtime.systemstack",
                "runtime.gcAssistAlloc",
                "runtime.mallocgc",
                "main.handler",
            ],
            G,
        ),
        (["runtime.(*mspan).sweep", "runtime.sweepone", "runtime.bgsweep"], G),
        (["runtime.(*pageAlloc).scavenge", "runtime.bgscavenge"], G),
        # scheduler wins over GC when both appear (checked first)
        (["runtime.gcBgMarkWorker", "runtime.schedule"], S),
        (["runtime.memmove", "main.copyAll", "main.main"], R),
        (["runtime.mallocgc", "runtime.newobject", "encoding/json.Marshal"], R),
        (["runtime/internal/syscall.Syscall6", "syscall.Syscall", "os.(*File).Write"], U),
        (["runtime/pprof.(*profileBuilder).build"], U),
        (["main.hotLoop", "main.main", "runtime.main"], U),
        (["net/http.(*conn).serve"], U),
        (["main.Map[go.shape.int,go.shape.string]", "runtime.main"], U),
        ([], U),
    ],
)
def test_classify(stack: list[str], expected: Category) -> None:
    assert classify(stack) == expected


@pytest.mark.parametrize(
    ("name", "package"),
    [
        ("runtime.schedule", "runtime"),
        ("runtime.(*mheap).alloc", "runtime"),
        ("runtime/internal/atomic.Load", "runtime/internal/atomic"),
        ("net/http.(*conn).serve", "net/http"),
        # the linker escapes dots in the last path element as %2e
        ("gopkg.in/yaml%2ev3.(*decoder).unmarshal", "gopkg.in/yaml%2ev3"),
        ("main.main", "main"),
        ("main.Map[go.shape.int,go.shape.*uint8]", "main"),
        ("example.com/x.F[example.com/y.T]", "example.com/x"),
        ("type:.eq.main.T", "type:"),
        ("_rt0_amd64", "_rt0_amd64"),
    ],
)
def test_package_of(name: str, package: str) -> None:
    assert package_of(name) == package


def test_shares_and_runtime_share() -> None:
    sh = shares([(S, 30), (G, 20), (R, 10), (U, 40), (U, 0)])
    assert sh == {S: 0.3, G: 0.2, R: 0.1, U: 0.4}
    assert runtime_share(sh) == pytest.approx(0.6)
    assert shares([]) == {S: 0.0, G: 0.0, R: 0.0, U: 0.0}
