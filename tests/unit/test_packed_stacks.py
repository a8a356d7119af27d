"""PackedStacks, the window's unsymbolized stacks in flat arrays (agent/analysis/attribution.py):
what goes in comes out, in order, and PCs outside u64 are wrapped the way the kernel's u64 would
hold them, with nothing of a failed fast path left behind."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.analysis.attribution import PackedStacks

U64 = st.integers(0, 2**64 - 1)
STACKS = st.lists(st.tuples(st.lists(U64, max_size=80).map(tuple), st.integers(1, 2**40)), max_size=50)


@given(STACKS)
def test_stacks_come_back_as_they_went_in(stacks: list[tuple[tuple[int, ...], int]]) -> None:
    packed = PackedStacks(stacks)
    assert list(packed) == stacks
    assert len(packed) == len(stacks)


@given(STACKS, st.lists(st.integers(-(2**63), -1), min_size=1, max_size=3))
def test_negative_pcs_wrap_to_u64_without_leftovers(stacks: list[tuple[tuple[int, ...], int]], bad: list[int]) -> None:
    odd = (0x401000, *bad, 0x402000)  # the fast path fails midway through this one
    packed = PackedStacks([*stacks, (odd, 7), *stacks])
    want = (0x401000, *(pc % 2**64 for pc in bad), 0x402000)
    assert list(packed) == [*stacks, (want, 7), *stacks]
    assert len(packed.frames) == sum(len(s) for s, _ in stacks) * 2 + len(odd)
