"""deepj.evaluation.musicstats: each statistic on a hand-made piece equals its hand-computed value; OA is 1 for
identical distributions, 0 for disjoint ones, and matches the analytic overlap of two Gaussians."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepj.evaluation import musicstats as ms
from deepj.music.representation import ReprConfig, make_notes, notes_to_roll

# Two bars (32 steps). Onsets at 0, 2, 8, 12; bar 2 (steps 16..31) is silent.
#   step:   0  1  2  3 | 4..7 | 8  9 10 11 | 12 | 13..31
#   C4 60   x  x  x  x
#   E4 64   x  x
#   G4 67         x  x
#   D4 62                      x
#   C5 72                      x  x  x  x
#   C#4 61                                   x
PIECE = make_notes([(60, 0, 4, 80), (64, 0, 2, 80), (67, 2, 4, 80), (62, 8, 9, 80), (72, 8, 12, 80), (61, 12, 13, 80)])
STEPS = 32


def test_pitch_class_histogram():
    h = ms.pitch_class_histogram(PIECE)
    expected = np.zeros(12)
    expected[[0, 1, 2, 4, 7]] = [2, 1, 1, 1, 1]  # C twice (60, 72), C#, D, E, G
    np.testing.assert_allclose(h, expected / 6)


def test_scalar_statistics_by_hand():
    s = ms.piece_stats(PIECE, STEPS)
    assert s["pitch_range"] == 12  # 72 - 60
    # Sounding counts on non-silent steps: 2,2,2,2 (steps 0-3), 2 (step 8), 1,1,1 (9-11), 1 (12): 14 / 9.
    assert s["polyphony"] == pytest.approx(14 / 9)
    assert s["note_density"] == 3.0  # 6 notes in 2 bars
    np.testing.assert_array_equal(s["ioi"], [2, 6, 4])  # onsets 0, 2, 8, 12
    assert s["mean_ioi"] == pytest.approx(4.0)
    np.testing.assert_array_equal(np.sort(s["note_length"]), [1, 1, 2, 2, 4, 4])
    assert s["mean_note_length"] == pytest.approx(14 / 6)
    assert s["empty_bar_rate"] == 0.5
    # C major holds C, C, D, E, G but not C#: 5 of 6; no major scale holds all six.
    assert s["scale_consistency"] == pytest.approx(5 / 6)


def test_partial_last_bar_and_held_notes():
    # A note held from bar 1 into bar 2 makes bar 2 non-empty; a third, partial bar (steps 32..39) is silent.
    notes = make_notes([(50, 10, 20, 64)])
    assert ms.empty_bar_rate(notes, 40) == pytest.approx(1 / 3)
    assert ms.polyphony(notes, 40) == 1.0
    assert ms.scale_consistency(notes) == 1.0


def test_empty_piece_is_nan_where_undefined():
    s = ms.piece_stats(make_notes([]), 16)
    assert math.isnan(s["pitch_range"]) and math.isnan(s["polyphony"]) and math.isnan(s["scale_consistency"])
    assert math.isnan(s["mean_ioi"]) and math.isnan(s["mean_note_length"])
    assert s["note_density"] == 0.0 and s["empty_bar_rate"] == 1.0


def test_roll_stats_equal_note_stats():
    cfg = ReprConfig()
    roll = notes_to_roll(PIECE, cfg, 0, STEPS)
    a, b = ms.roll_stats(roll, cfg), ms.piece_stats(PIECE, STEPS)
    for k in ms.SCALARS:
        assert a[k] == pytest.approx(b[k]), k


def test_statset_pools_histograms_and_skips_nan():
    s = ms.collect([(PIECE, STEPS), (make_notes([]), 16)])
    assert s.pieces == 2
    np.testing.assert_array_equal(s.values("pitch_range"), [12.0])  # the empty piece's NaN is left out
    np.testing.assert_array_equal(s.values("note_density"), [3.0, 0.0])
    assert s.ioi[1] == 1 and s.ioi[3] == 1 and s.ioi[5] == 1  # IOIs 2, 4, 6 in bins 1, 3, 5
    assert s.note_length[0] == 2 and s.note_length[1] == 2 and s.note_length[3] == 2
    assert ms.step_histogram([40, 33, 32])[-1] == 2  # > 32 steps share the last bin


def test_oa_identical_is_one_and_disjoint_is_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=300)
    assert ms.overlap_area(a, a.copy()) == pytest.approx(1.0, abs=1e-9)
    assert ms.overlap_area(a, a + 100.0) == pytest.approx(0.0, abs=1e-9)
    assert ms.overlap_area([3.0] * 5, [3.0] * 7) == pytest.approx(1.0, abs=1e-9)  # constant sets
    assert ms.overlap_area([0.0] * 5, [10.0] * 5) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(ms.overlap_area([], a))


def test_oa_of_two_gaussians_matches_theory():
    # N(0, 1) vs N(1, 1): OA = 2 * Phi(-1/2) = 0.617.
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 4000), rng.normal(1, 1, 4000)
    expected = 2 * 0.5 * math.erfc(0.5 / math.sqrt(2))
    assert ms.overlap_area(a, b) == pytest.approx(expected, abs=0.03)
    assert ms.overlap_area(a, b) == pytest.approx(ms.overlap_area(b, a), abs=1e-12)


def test_oa_uses_one_grid_for_sets_of_different_spread():
    # A narrow set inside a wide one: OA is the narrow set's mass under the wide density, far from 0 or 1.
    # (Densities on two different grids, as in MGEval's KL code, would not be comparable point by point.)
    rng = np.random.default_rng(2)
    wide, narrow = rng.normal(0, 5, 3000), rng.normal(0, 0.5, 3000)
    oa = ms.overlap_area(wide, narrow)
    # Exact for N(0, 5) vs N(0, 0.5): the densities cross at +-x0, inside which the wide one is the lower:
    # OA = P(|wide| < x0) + P(|narrow| > x0).
    s1, s2 = 5.0, 0.5
    x0 = math.sqrt(2 * math.log(s1 / s2) * s1**2 * s2**2 / (s1**2 - s2**2))
    exact = math.erf(x0 / s1 / math.sqrt(2)) + math.erfc(x0 / s2 / math.sqrt(2))
    assert oa == pytest.approx(exact, abs=0.03)


def test_histogram_overlap():
    assert ms.histogram_overlap([1, 0, 0], [0, 2, 3]) == 0.0
    assert ms.histogram_overlap([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert ms.histogram_overlap([1, 1], [1, 0]) == pytest.approx(0.5)
    assert math.isnan(ms.histogram_overlap([0, 0], [1, 0]))
    with pytest.raises(ValueError, match="bins differ"):
        ms.histogram_overlap([1, 0], [1, 0, 0])


def test_compare_identical_sets():
    rng = np.random.default_rng(3)
    pieces = []
    for _ in range(20):
        k = int(rng.integers(3, 12))
        start = rng.integers(0, 60, k)
        pieces.append((make_notes([(int(p), int(s), int(s + d), 64) for p, s, d in
                                   zip(rng.integers(40, 80, k), start, rng.integers(1, 6, k))]), 64))
    # make_notes may leave same-pitch overlaps; the statistics do not need canonical notes.
    res = ms.compare(ms.collect(pieces), ms.collect(pieces))
    for k, v in res.items():
        assert v["oa"] == pytest.approx(1.0, abs=1e-6), k


def test_constant_set_borrows_the_other_sets_bandwidth():
    # Real windows that never leave a bar empty against generated pieces of which 8 of 30 leave one empty:
    # about 22/30 of the generated mass lies where the real one does.
    real, gen = [0.0] * 30, [0.0] * 22 + [0.25] * 8
    assert 0.7 < ms.overlap_area(real, gen) < 0.85
