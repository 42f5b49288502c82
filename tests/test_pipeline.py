"""Tests of course_utils.pipeline (generated from notebooks/13_pipeline.ipynb).

Every schedule generator is checked with the validator over a grid of (p, m, v); the simulator
against the closed forms of GPipe, 1F1B (Narayanan et al. 2021), interleaved 1F1B (Megatron-LM),
ZB-H1 (Qi et al. 2023) and DeepSeek-V3's Table 2; the generators against PyTorch's own orders;
the real send/recv runner against one process's gradients (torch.testing.assert_close, float32
and float64, awkward sizes); DualPipe (DeepSeek-V3 §3.2.1): its placement, phases, Table 2's
bubble and activations; and every bad-input error.
"""
import math

import matplotlib
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from course_utils.launch import run_distributed
from course_utils.pipeline import (DualPipeSchedule, Timeline, dualpipe, format_schedule,
                                   gpipe, interleaved_1f1b, one_f_one_b, pipedream_versions,
                                   plot_timeline, run_stage_actions, simulate,
                                   validate_schedule, zero_bubble_h1)

matplotlib.use("Agg")

GRID = [(p, m) for p in range(1, 7) for m in range(1, 13)]
GRID_V = [(p, m, v) for p in range(1, 6) for v in range(1, 5) for m in range(p, 4 * p + 1, p)]


# ---------------------------------------------------------------- generators + validator

@pytest.mark.parametrize("gen", [gpipe, one_f_one_b, zero_bubble_h1])
def test_generators_are_valid_on_a_grid(gen):
    for p, m in GRID:
        sched = gen(p, m)
        assert validate_schedule(sched) == (p, m, 1), (gen.__name__, p, m)
        kinds = {"F", "B", "W"} if gen is zero_bubble_h1 else {"F", "B"}
        assert all(len(acts) == len(kinds) * m for acts in sched)
        assert all(isinstance(a, tuple) and len(a) == 3 for acts in sched for a in acts)


def test_interleaved_is_valid_on_a_grid():
    for p, m, v in GRID_V:
        assert validate_schedule(interleaved_1f1b(p, m, v)) == (p, m, v), (p, m, v)


def test_interleaved_with_one_chunk_is_1f1b():
    for p, m in GRID:
        if m % p == 0:
            assert interleaved_1f1b(p, m, 1) == one_f_one_b(p, m)


def test_1f1b_phases():
    # warm-up of p-1-r forwards, then F/B alternating, then the cool-down backwards
    assert one_f_one_b(3, 4)[0] == [("F", 0, 0), ("F", 1, 0), ("F", 2, 0), ("B", 0, 0),
                                    ("F", 3, 0), ("B", 1, 0), ("B", 2, 0), ("B", 3, 0)]
    assert one_f_one_b(3, 4)[2] == [(k, j, 0) for j in range(4) for k in "FB"]
    assert format_schedule(gpipe(2, 2)) == "rank 0: F0 F1 B0 B1\nrank 1: F0 F1 B0 B1"


def test_zero_bubble_defers_r_weight_gradients_on_rank_r():
    for p, m in GRID:
        for r, acts in enumerate(zero_bubble_h1(p, m)):
            bs_before_first_w = [a[0] for a in acts[:acts.index(("W", 0, 0))]].count("B")
            assert bs_before_first_w == min(r + 1, m)
            assert [a for a in acts if a[0] != "W"] == one_f_one_b(p, m)[r]


# ---------------------------------------------------------------- simulator vs closed forms

def test_gpipe_and_1f1b_bubble_and_memory():
    for p, m in GRID:
        for t_f, t_b in [(1.0, 2.0), (0.7, 1.3)]:
            g = simulate(gpipe(p, m), t_f=t_f, t_b=t_b)
            o = simulate(one_f_one_b(p, m), t_f=t_f, t_b=t_b)
            assert g.makespan == pytest.approx((m + p - 1) * (t_f + t_b))
            assert o.makespan == pytest.approx(g.makespan)
            assert g.bubble == pytest.approx((p - 1) / (m + p - 1))
            assert g.bubble_over_ideal == pytest.approx((p - 1) / m)
        assert g.peak_activations == [m] * p
        assert o.peak_activations == [min(p - r, m) for r in range(p)]


def test_1f1b_cooldown_the_last_rank_is_done_first():
    """In 1F1B's cool-down the last rank is idle because it has finished; the first ranks still
    run the last backwards, each a t_b after the rank below: rank r ends (p - 1 - r) t_b before
    rank 0 (t_comm = 0), and rank 0 ends the run."""
    for p, m in GRID:
        for t_f, t_b in [(1.0, 2.0), (1.0, 3.0), (0.5, 0.7)]:
            tl = simulate(one_f_one_b(p, m), t_f=t_f, t_b=t_b)
            ends = [evs[-1][4] for evs in tl.events]
            assert ends[0] == tl.makespan
            for r in range(p):
                assert math.isclose(tl.makespan - ends[r], r * t_b, abs_tol=1e-9), (p, m, r)
            if p > 1 and m >= p:                          # ZB-H1 fills that tail with W's
                z = simulate(zero_bubble_h1(p, m), t_f=t_f, t_b=t_b, t_w=min(t_f, t_b / 2))
                assert z.makespan - z.events[-1][-1][4] < tl.makespan - ends[-1]


def test_interleaved_bubble_and_memory():
    for p, m, v in GRID_V:
        tl = simulate(interleaved_1f1b(p, m, v))
        assert tl.bubble_over_ideal == pytest.approx((p - 1) / (v * m), abs=1e-12)
        assert tl.bubble == pytest.approx((p - 1) / (v * m + p - 1), abs=1e-12)
        want = [p - r if v == 1 else min(m, p + (p - 1 - 2 * r) / v) for r in range(p)]
        assert tl.peak_activations == pytest.approx(want)


@pytest.mark.parametrize("t_f,t_b,t_w", [(1, 2, None), (1, 2, 0.5), (1, 3, 1), (2, 2, 1),
                                         (1, 1, 0.2), (2, 3, 1.5)])
def test_zero_bubble_h1_formula_where_it_holds(t_f, t_b, t_w):
    tw = t_b / 2 if t_w is None else t_w
    tB = t_b - tw
    assert tw <= min(t_f, tB)
    for p in range(1, 7):
        for m in range(p, 3 * p + 2):
            tl = simulate(zero_bubble_h1(p, m), t_f=t_f, t_b=t_b, t_w=t_w)
            assert tl.makespan == pytest.approx(m * (t_f + t_b) + (p - 1) * (t_f + tB - tw))
            assert tl.peak_activations == [p] * p


@pytest.mark.parametrize("t_f,t_b,t_w", [(1, 2, 1.5), (1, 2, 1.9), (2, 2, 1.2), (1, 4, 1.5)])
def test_zero_bubble_h1_formula_fails_outside_its_condition(t_f, t_b, t_w):
    for p in (2, 3, 4):
        tl = simulate(zero_bubble_h1(p, 2 * p), t_f=t_f, t_b=t_b, t_w=t_w)
        assert tl.makespan > 2 * p * (t_f + t_b) + (p - 1) * (t_f + t_b - 2 * t_w) + 1e-9


def test_zero_bubble_memory_when_m_is_small():
    for p, m in GRID:
        assert simulate(zero_bubble_h1(p, m)).peak_activations == [min(p, m)] * p


def test_deepseek_v3_table_2_rows():
    p, m, t_f, t_b, t_w = 8, 16, 1.0, 2.0, 0.8
    busy = m * (t_f + t_b)
    assert simulate(one_f_one_b(p, m), t_f=t_f, t_b=t_b).makespan - busy == pytest.approx(
        (p - 1) * (t_f + t_b))
    assert simulate(zero_bubble_h1(p, m), t_f=t_f, t_b=t_b, t_w=t_w).makespan - busy == \
        pytest.approx((p - 1) * (t_f + t_b - 2 * t_w))


def test_gpipe_with_communication():
    for p, m in GRID:
        for c in (0.0, 0.25, 1.0):
            tl = simulate(gpipe(p, m), t_comm=c)
            assert tl.makespan == pytest.approx((m + p - 1) * 3.0 + 2 * (p - 1) * c)


def test_timeline_events_are_consistent():
    tl = simulate(interleaved_1f1b(3, 6, 2), t_f=1.0, t_b=2.5, t_comm=0.1)
    assert isinstance(tl, Timeline) and (tl.p, tl.m, tl.v) == (3, 6, 2)
    for r, evs in enumerate(tl.events):
        assert [e[:3] for e in evs] == interleaved_1f1b(3, 6, 2)[r]
        assert all(e[3] < e[4] for e in evs)
        assert all(a[4] <= b[3] + 1e-12 for a, b in zip(evs, evs[1:]))     # one at a time
        assert sum(e[4] - e[3] for e in evs) == pytest.approx(tl.busy)
    assert tl.makespan == max(evs[-1][4] for evs in tl.events)


# ---------------------------------------------------------------- PyTorch's orders

def _torch_order(cls, p, m, v=1):
    import types

    from torch.distributed.pipelining.schedules import PipelineScheduleSingle
    st = types.SimpleNamespace(group_rank=0, group_size=p, num_stages=p * v, submod=None)
    sched = cls(st, m) if issubclass(cls, PipelineScheduleSingle) else cls([st] * v, m)
    kind = {"F": "F", "B": "B", "I": "B", "W": "W"}
    return [[(kind[a.computation_type.value], a.microbatch_index, a.stage_index // p)
             for a in sched.pipeline_order[r] if a is not None and a.computation_type.value in kind]
            for r in range(p)]


def test_same_order_as_torch_pipelining():
    sch = pytest.importorskip("torch.distributed.pipelining")
    for p in (1, 2, 3, 4):
        for m in (p, 2 * p, 3 * p):
            assert _torch_order(sch.ScheduleGPipe, p, m) == gpipe(p, m)
            assert _torch_order(sch.ScheduleInterleavedZeroBubble, p, m) == zero_bubble_h1(p, m)
            for v in (2, 3):
                assert _torch_order(sch.ScheduleInterleaved1F1B, p, m, v) == interleaved_1f1b(p, m, v)


# ---------------------------------------------------------------- real send/recv

D_IN, BATCH = 5, 12          # awkward: width 5, 3 microbatches of 4 rows (4 of 3 when interleaved)


def _model(n_blocks, dtype):
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(D_IN, D_IN), nn.Tanh())
                           for _ in range(n_blocks)]).to(dtype)


def _data(dtype):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(BATCH, D_IN, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(BATCH, D_IN, generator=g, dtype=torch.float64).to(dtype))


MAKE = {"gpipe": lambda p, m, v: gpipe(p, m), "1f1b": lambda p, m, v: one_f_one_b(p, m),
        "zb": lambda p, m, v: zero_bubble_h1(p, m), "il": interleaved_1f1b}


def _rank(rank, world_size, dtype, cases):
    x, y = _data(dtype)
    out = {}
    for name, v in cases:
        m = 4 if name == "il" and world_size == 2 else 3    # interleaved: m multiple of p
        model = _model(world_size * v, dtype)
        chunks = [model[c * world_size + rank] for c in range(v)]
        losses = run_stage_actions(rank, world_size, MAKE[name](world_size, m, v)[rank], chunks,
                                   list(x.chunk(m)), list(y.chunk(m)), F.mse_loss,
                                   (BATCH // m, D_IN))
        mine = {id(q) for ch in chunks for q in ch.parameters()}
        out[name] = ({k: q.grad for k, q in model.named_parameters() if id(q) in mine}, losses)
    return out


def _reference(n_blocks, dtype):
    model = _model(n_blocks, dtype)
    x, y = _data(dtype)
    loss = F.mse_loss(model(x), y)
    loss.backward()
    return {k: q.grad for k, q in model.named_parameters()}, loss.item()


@pytest.mark.parametrize("world_size,dtype", [(2, torch.float64), (1, torch.float32)])
def test_real_run_matches_one_process(world_size, dtype):
    cases = [("gpipe", 1), ("1f1b", 1), ("zb", 1), ("il", 2)]
    res = run_distributed(_rank, world_size, dtype, cases, timeout=60, echo=False)
    for name, v in cases:
        grads, losses = {}, {}
        for r in res:
            grads.update(r[name][0])
            losses.update(r[name][1])
        ref, ref_loss = _reference(world_size * v, dtype)
        assert sorted(grads) == sorted(ref), name
        for k in ref:
            assert grads[k].dtype == dtype
            assert_close(grads[k], ref[k], msg=f"{name}: {k}")
        assert sum(losses.values()) / len(losses) == pytest.approx(ref_loss, rel=1e-5)


def test_runner_bad_inputs():
    x = [torch.zeros(2, 3)] * 2
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\)"):
        run_stage_actions(2, 2, [], [nn.Linear(3, 3)], x, x, F.mse_loss, (2, 3))
    with pytest.raises(ValueError, match="one target per microbatch"):
        run_stage_actions(0, 2, [], [nn.Linear(3, 3)], x, x[:1], F.mse_loss, (2, 3))


# ---------------------------------------------------------------- PipeDream

def test_pipedream_versions():
    for p, m in [(1, 3), (2, 5), (4, 10), (5, 5), (3, 2)]:
        ver = pipedream_versions(p, m)
        j, r = torch.arange(m), torch.arange(p)[:, None]
        assert torch.equal(ver["forward"], (j - (p - 1 - r)).clamp(min=0))
        assert torch.equal(ver["backward"], j.expand(p, m))
        assert torch.equal(ver["vertical_sync"], ver["forward"][0].expand(p, m))
        assert (ver["vertical_sync"] <= ver["forward"]).all()
        assert ver["forward"].dtype == torch.int64
    assert pipedream_versions(4, 10)["stashed"].tolist() == [4, 3, 2, 1]


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call,match", [
    (lambda: gpipe(0, 4), r"p \(pipeline ranks\) must be an int >= 1, got 0"),
    (lambda: gpipe(2.0, 4), "must be an int >= 1, got 2.0"),
    (lambda: one_f_one_b(2, 0), r"m \(microbatches\) must be an int >= 1, got 0"),
    (lambda: one_f_one_b(True, 2), "got True"),
    (lambda: zero_bubble_h1(3, -1), "must be an int >= 1"),
    (lambda: interleaved_1f1b(2, 4, 0), r"v \(chunks per rank\) must be an int >= 1"),
    (lambda: interleaved_1f1b(4, 6, 2), "must be a multiple of p = 4"),
    (lambda: pipedream_versions(0, 3), "must be an int >= 1"),
])
def test_generator_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("sched,match", [
    ([], "non-empty list"),
    ("F0", "non-empty list"),
    ([("F", 0, 0)], r"schedule\[0\] must be a list"),
    ([[("X", 0, 0)]], "kind in 'F', 'B', 'W'"),
    ([[("F", 0)]], r"tuple \(kind, microbatch, chunk\)"),
    ([[("F", -1, 0)]], "ints >= 0"),
    ([[("F", 0, 0), ("F", 0, 0), ("B", 0, 0)]], "runs F0 twice"),
    ([[("F", 0, 0), ("B", 0, 0)], [("F", 0, 0)]], "rank 1 misses B0"),
    ([[("F", 0, 0), ("B", 0, 0), ("W", 0, 0)], [("F", 0, 0), ("B", 0, 0)]], "rank 1 misses W0"),
    ([[("B", 0, 0), ("F", 0, 0)]], "rank 0 is stuck at B0, waiting for F0 on rank 0"),
    ([[("F", 0, 0), ("B", 0, 0), ("F", 1, 0), ("B", 1, 0)],           # a cycle across ranks
      [("F", 0, 0), ("F", 1, 0), ("B", 1, 0), ("B", 0, 0)]], "deadlocks"),
    ([[("F", 0, 0), ("W", 0, 0), ("B", 0, 0)]], "stuck at W0"),
])
def test_validator_errors(sched, match):
    with pytest.raises(ValueError, match=match):
        validate_schedule(sched)


@pytest.mark.parametrize("kw,match", [
    (dict(t_f=0), "t_f must be a number > 0"),
    (dict(t_b=-1.0), "t_b must be a number > 0"),
    (dict(t_f=True), "t_f must be a number > 0"),
    (dict(t_comm=-0.1), "t_comm must be a number >= 0"),
    (dict(t_w=2.0), r"t_w must be None or a number in \(0, t_b\)"),
    (dict(t_w=0), r"t_w must be None or a number in \(0, t_b\)"),
])
def test_simulate_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        simulate(one_f_one_b(2, 2), **kw)


def test_simulate_rejects_invalid_schedules_too():
    with pytest.raises(ValueError, match="simulate: the schedule breaks a dependency"):
        simulate([[("B", 0, 0), ("F", 0, 0)]])


@pytest.mark.parametrize("p", [1, 2, 4, 8])
def test_plot_timeline_default_figure_is_readable(p):
    """The course's rule (tests/test_notebooks.py): at least 200 px high, at most 4.5 times as
    wide as high, at the course's 120 dpi; and no text under 9 pt."""
    import matplotlib.pyplot as plt
    ax = plot_timeline(simulate(one_f_one_b(p, 8)))
    w, h = ax.figure.get_size_inches() * 120
    assert h >= 200 and w <= 4.5 * h
    assert min(t.get_fontsize() for t in ax.texts) >= 9
    assert min(t.get_fontsize() for t in ax.get_legend().get_texts()) >= 9
    plt.close("all")


def test_plot_timeline():
    import matplotlib.pyplot as plt
    ax = plot_timeline(simulate(zero_bubble_h1(3, 4)))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rank 0", "rank 1", "rank 2"]
    assert ax.get_xlim() == pytest.approx((0, simulate(zero_bubble_h1(3, 4)).makespan))
    assert "bubble" in ax.get_title(loc="left")
    plt.close("all")
    with pytest.raises(TypeError, match="expected the Timeline that simulate"):
        plot_timeline(zero_bubble_h1(3, 4))
    assert math.isclose(simulate(gpipe(1, 1)).bubble, 0.0, abs_tol=1e-12)


# ---------------------------------------------------------------- DualPipe

GRID_DUAL = [(p, m) for p in (2, 4, 6, 8) for m in sorted({2 * p, 2 * p + 2, 3 * p + p % 2, 4 * p})]


def test_dualpipe_is_valid_and_each_microbatch_goes_one_way():
    for p, m in GRID_DUAL:
        sched = dualpipe(p, m)
        assert isinstance(sched, DualPipeSchedule) and sched.placement == "dual"
        assert validate_schedule(sched) == (p, m, 2), (p, m)
        for r, acts in enumerate(sched):
            assert all(c == int(j >= m // 2) for _, j, c in acts)        # lower half down, upper half up
            for k in "FB":
                assert sorted(j for kk, j, _ in acts if kk == k) == list(range(m))
            ws = [(j, c) for k, j, c in acts if k == "W"]
            assert len(ws) == len(set(ws))
            for i in sched.overlapped[r]:                                 # a pair: F then B, other chunk
                (k1, _, c1), (k2, _, c2) = acts[i], acts[i + 1]
                assert (k1, k2) == ("F", "B") and c1 != c2


def test_dualpipe_phases_of_the_released_code():
    """Counts that follow from deepseek-ai/DualPipe's DualPipe.step: rank r at distance h from its
    end starts with 2(p/2 - h - 1) + 1 forwards of its near chunk, runs
    2(m/2 - p + h + 1) + (p/2 - h - 1) overlapped pairs (one fewer on the two middle ranks) and
    ends with h + 1 weight-gradient actions."""
    for p, m in GRID_DUAL:
        sched = dualpipe(p, m)
        for r, acts in enumerate(sched):
            h, near = min(r, p - 1 - r), int(r >= p // 2)
            lead = next(i for i, a in enumerate(acts) if a[2] != near or a[0] != "F")
            assert lead == 2 * (p // 2 - h - 1) + 1, (p, m, r)
            pairs = 2 * (m // 2 - p + h + 1) + (p // 2 - h - 1) - (h == p // 2 - 1)
            assert len(sched.overlapped[r]) == pairs, (p, m, r)
            assert [a[0] for a in acts[-(h + 1):]] == ["W"] * (h + 1)
    assert format_schedule(dualpipe(2, 4)).splitlines()[0] == \
        "rank 0: F0 F2.1 F1 B2.1 F3.1&B0 B3.1 B1 W1"   # traced by hand through DualPipe.step


def test_dualpipe_placement_two_copies_of_each_stage():
    # chunk 1 of rank r is stage p-1-r: a microbatch of the upward copy enters at rank p-1 at once
    tl = simulate(dualpipe(4, 8), t_comm=0.5)
    first_f = {(r, j): s for r, evs in enumerate(tl.events) for k, j, c, s, _ in evs if k == "F"}
    assert first_f[(3, 4)] == 0.0 and first_f[(0, 0)] == 0.0
    assert first_f[(2, 4)] == pytest.approx(1.0 + 0.5)                   # one stage and one hop later
    assert first_f[(1, 0)] == pytest.approx(1.0 + 0.5)


@pytest.mark.parametrize("t_fb", [3.0, 2.5, 2.2, 2.0])
def test_dualpipe_table_2_bubble_with_equal_chunk_costs(t_fb):
    """DeepSeek-V3 Table 2: (PP/2 - 1)(F&B + B - 3W), the largest idle time over the ranks, exact
    when F = B - W = W (B the whole backward), for any F&B from F + B (no overlap) down to B."""
    for p, m in GRID_DUAL:
        for t_f in (1.0, 0.5):
            tl = simulate(dualpipe(p, m), t_f=t_f, t_b=2 * t_f, t_w=t_f,
                          t_fb=t_fb * t_f)
            fb = t_fb * t_f
            assert max(tl.idle) == pytest.approx((p / 2 - 1) * (fb + 2 * t_f - 3 * t_f)), (p, m)
            assert tl.peak_activations == [p + 1] * p
            one = simulate(one_f_one_b(p, m), t_f=t_f, t_b=2 * t_f)
            assert one.idle == pytest.approx([(p - 1) * 3 * t_f] * p)


def test_dualpipe_formula_is_not_exact_for_other_costs():
    tl = simulate(dualpipe(8, 16), t_f=1.0, t_b=2.0, t_w=0.8, t_fb=2.5)
    assert max(tl.idle) != pytest.approx(3 * (2.5 + 2.0 - 2.4))


def test_overlap_shortens_and_is_drawn_split():
    import matplotlib.pyplot as plt
    no, yes = simulate(dualpipe(4, 8), t_w=1.0), simulate(dualpipe(4, 8), t_w=1.0, t_fb=2.0)
    assert yes.makespan < no.makespan and no.busy == pytest.approx(8 * 3.0)
    assert yes.busy < no.busy
    ax = plot_timeline(yes)
    halves = [b for coll in ax.collections for b in coll.get_paths()
              if abs(b.get_extents().height - 0.4) < 1e-9]
    assert len(halves) == 2 * sum(len(o) for o in dualpipe(4, 8).overlapped)
    w, h = ax.figure.get_size_inches() * 120
    assert h >= 200 and w <= 4.5 * h and min(t.get_fontsize() for t in ax.texts) >= 9
    plt.close("all")


def test_dualpipe_hand_written_needs_the_placement():
    sched = [list(a) for a in dualpipe(2, 4)]                      # a plain list loses it
    with pytest.raises(ValueError, match="misses"):
        validate_schedule(sched)
    assert validate_schedule(sched, placement="dual") == (2, 4, 2)
    assert simulate(sched, placement="dual").makespan == simulate(dualpipe(2, 4)).makespan


@pytest.mark.parametrize("call,match", [
    (lambda: dualpipe(3, 8), "must be even"),
    (lambda: dualpipe(4, 6), "m >= 2p"),
    (lambda: dualpipe(4, 9), "must be even"),
    (lambda: dualpipe(1, 4), r"p \(pipeline ranks\) must be an int >= 2"),
    (lambda: simulate(dualpipe(4, 8), t_fb=1.0), r"t_fb .* must be a number in \[max\(t_f, t_b\), t_f \+ t_b\]"),
    (lambda: simulate(dualpipe(4, 8), t_fb=3.5), "must be a number in"),
    (lambda: simulate(one_f_one_b(4, 8), t_fb=2.5), "marks its overlapped pairs"),
    (lambda: validate_schedule(gpipe(2, 2), placement="zigzag"), "placement must be"),
    (lambda: validate_schedule([[("F", 0, 0), ("B", 0, 1)]], placement="dual"),
     "microbatch 0 runs on chunks 0 and 1"),
    (lambda: validate_schedule([[("F", 0, 2), ("B", 0, 2)]], placement="dual"), "chunks 0 and 1"),
    (lambda: validate_schedule([[("B", 0, 1), ("F", 0, 1)], [("F", 0, 1), ("B", 0, 1)]],
                               placement="dual"), "rank 0 is stuck at B0.1, waiting for F0.1 on rank 0"),
])
def test_dualpipe_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
