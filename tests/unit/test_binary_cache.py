"""The daemon's memory bounds: parsed binaries by weight and count, one shared PC cache.

On real binaries (Debian's prometheus and promtool: two builds whose link-time
addresses overlap), so a cache keyed wrongly would answer with the other
binary's function.
"""

from __future__ import annotations

import contextlib
import gc
import random
import weakref
from pathlib import Path

import pytest

from agent.errors import BinaryError
from agent.gobinary.elf import open_image
from agent.gobinary.symbolizer import BinaryCache, GoBinary, PlainBinary, binary_weight
from tests.support.capabilities import need

PROMETHEUS, PROMTOOL = Path("/usr/bin/prometheus"), Path("/usr/bin/promtool")


@pytest.fixture(scope="module")
def fresh() -> tuple[GoBinary, GoBinary]:
    need(PROMETHEUS.is_file() and PROMTOOL.is_file(), "Debian's prometheus package (scripts/setup.sh)")
    # as the cache holds them: rebuilt from plain data, with the kept regions copied
    prom, tool = (GoBinary.from_plain(GoBinary.open(p).to_plain()) for p in (PROMETHEUS, PROMTOOL))
    return prom, tool


def common_pcs(a: GoBinary, b: GoBinary, n: int) -> list[int]:
    """PCs inside functions of both binaries: the same number means different code in each."""
    lo = max(a.table.entries[0], b.table.entries[0])
    hi = min(a.table.entries[-1], b.table.entries[-1])
    rnd = random.Random(7)
    return [rnd.randrange(lo, hi) for _ in range(n)]


def test_shared_frame_cache_keeps_binaries_apart_and_bounded(fresh: tuple[GoBinary, GoBinary]) -> None:
    prom_ref, tool_ref = fresh
    cache = BinaryCache(pc_capacity=50)
    prom, tool = cache.open_path(PROMETHEUS), cache.open_path(PROMTOOL)
    pcs = common_pcs(prom, tool, 200)
    differs = 0
    for pc in pcs:
        got_p, got_t = prom.frames(pc), tool.frames(pc)
        assert got_p == tuple(prom_ref.table.frames(pc))
        assert got_t == tuple(tool_ref.table.frames(pc))
        assert (prom.frames(pc), tool.frames(pc)) == (got_p, got_t)  # now from the cache
        differs += got_p != got_t
        assert len(cache.frames) <= 50
    assert differs > 100
    assert cache.frames.evictions == 2 * len(pcs) - 50 and cache.frames.hits == 2 * len(pcs)


def test_binaries_are_evicted_by_weight_newest_kept(fresh: tuple[GoBinary, GoBinary]) -> None:
    prom_ref, tool_ref = fresh
    cache = BinaryCache(max_bytes=binary_weight(prom_ref) + binary_weight(tool_ref) - 1)
    first = cache.open_path(PROMETHEUS)
    assert cache.weight == binary_weight(first) and len(cache) == 1
    cache.open_path(PROMTOOL)
    assert len(cache) == 1 and cache.weight == binary_weight(tool_ref) <= cache.max_bytes
    again = cache.open_path(PROMETHEUS)  # parsed anew, and right
    assert again is not first and len(cache) == 1
    pc = prom_ref.table.entries[100]
    assert again.frames(pc) == tuple(prom_ref.table.frames(pc))

    tiny = BinaryCache(max_bytes=1)  # a binary over the budget on its own still works
    assert tiny.open_path(PROMETHEUS).table.nfunc == prom_ref.table.nfunc and len(tiny) == 1


def test_binaries_are_evicted_by_count(fresh: tuple[GoBinary, GoBinary]) -> None:
    cache = BinaryCache(capacity=1)
    cache.open_path(PROMETHEUS)
    cache.open_path(PROMTOOL)
    assert len(cache) == 1


def test_a_broken_binary_costs_one_attempt(tmp_path: Path) -> None:
    bad = tmp_path / "not-go"
    bad.write_bytes(b"\x7fELF" + b"\0" * 60)
    calls = []

    def opener() -> PlainBinary:
        calls.append(1)
        return GoBinary(open_image(bad)).to_plain()

    cache = BinaryCache()
    key = ("dev", "ino", 1, 64)
    errors = []
    for _ in range(3):
        with pytest.raises(BinaryError) as exc:
            cache.get(key, opener)
        errors.append(exc.value)
    assert len(calls) == 1
    assert {(type(e), str(e), e.help) for e in errors} == {(type(errors[0]), str(errors[0]), errors[0].help)}


def test_a_remembered_failure_pins_no_frames(tmp_path: Path) -> None:
    """The daemon's leak this guards against: a stored exception's traceback kept each cycle's data alive."""
    bad = tmp_path / "not-go"
    bad.write_bytes(b"\x7fELF" + b"\0" * 60)
    cache = BinaryCache()

    class Payload:
        pass

    def cycle() -> weakref.ref[Payload]:
        payload = Payload()  # a local of the failing call's frame, like a cycle's samples
        with contextlib.suppress(BinaryError):
            cache.get(("k",), lambda: GoBinary(open_image(bad)).to_plain())
        return weakref.ref(payload)

    refs = [cycle() for _ in range(3)]
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
