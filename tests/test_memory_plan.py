"""The static arena planner: lower bound, greedy placement, validity."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edlc.memory_plan import Buffer, Plan, align_up, check, first_fit, lower_bound, plan


def test_lower_bound_is_the_peak_of_live_bytes():
    bufs = [Buffer("a", 100, 0, 1), Buffer("b", 50, 1, 2), Buffer("c", 200, 2, 3)]
    # step 1: a + b = 112 + 64; step 2: b + c = 64 + 208 (sizes rounded up to 16)
    assert lower_bound(bufs) == 64 + 208
    assert lower_bound(bufs, align=1) == 250
    assert lower_bound([]) == 0


def test_chain_reuses_memory_and_reaches_the_bound():
    # a chain of layers: each buffer lives from its producer to its consumer
    sizes = [4096, 8192, 2048, 8192, 1024]
    bufs = [Buffer(f"t{i}", s, i, i + 1) for i, s in enumerate(sizes)]
    p = plan(bufs)
    assert p.lower_bound == 4096 + 8192  # step 1: t0 and t1 live
    assert p.size == p.lower_bound and p.overhead == 0.0
    assert p.size < sum(sizes)


def test_greedy_by_size_places_large_buffers_first():
    bufs = [Buffer("small", 16, 0, 3), Buffer("big", 1024, 1, 2)]
    offsets = first_fit(bufs, lambda b: (-b.size,))
    assert offsets == {"big": 0, "small": 1024}


def test_disjoint_lifetimes_share_offset_zero():
    bufs = [Buffer("a", 100, 0, 0), Buffer("b", 300, 1, 1), Buffer("c", 200, 2, 2)]
    p = plan(bufs)
    assert set(p.offsets.values()) == {0} and p.size == 304


def test_check_rejects_overlap_and_misalignment():
    bufs = [Buffer("a", 64, 0, 1), Buffer("b", 64, 1, 2)]
    with pytest.raises(ValueError, match="live at the same time"):
        check(Plan({"a": 0, "b": 32}, 96, 128, "manual"), bufs)
    with pytest.raises(ValueError, match="misaligned"):
        check(Plan({"a": 0, "b": 72}, 144, 128, "manual"), bufs)
    check(Plan({"a": 0, "b": 64}, 128, 128, "manual"), bufs)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unique"):
        plan([Buffer("a", 1, 0, 0), Buffer("a", 1, 0, 0)])
    with pytest.raises(ValueError, match="lifetime"):
        plan([Buffer("a", 1, 3, 2)])


buffers = st.lists(
    st.tuples(st.integers(1, 5000), st.integers(0, 30), st.integers(0, 8)), min_size=1,
    max_size=40).map(lambda xs: [Buffer(f"b{i}", s, t, t + d) for i, (s, t, d) in enumerate(xs)])


@settings(max_examples=150, deadline=None)
@given(buffers)
def test_random_plans_are_valid_and_above_the_bound(bufs):
    p = plan(bufs)  # plan() checks validity itself; check again explicitly
    check(p, bufs)
    assert p.size >= p.lower_bound
    assert p.size <= sum(align_up(b.size) for b in bufs)
    assert p.tried["greedy-by-size"] >= p.size
