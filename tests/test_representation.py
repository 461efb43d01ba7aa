"""The representation, pinned by hand-made MIDI files with expected grid notes and rolls, and by round trips.

Hand cases (tests/midi_files.HAND_CASES) are real MIDI files read back through `read_midi` with both parsers; the
expected values below are written out by hand from docs/design.md#the-representation and the rules in
deepj/music/representation.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from midi_files import HAND_CASES, MidiSpec, note, track, write_spec

from deepj.data.shards import decode_notes, encode_notes
from deepj.music.midi_io import read_midi, write_midi
from deepj.music.representation import (
    NOTE_DTYPE,
    ReprConfig,
    empty_notes,
    make_notes,
    merge,
    notes_to_roll,
    num_steps,
    quantize,
    replay_flags,
    roll_to_notes,
)

PARSERS = ("symusic", "pretty_midi")
CFG = ReprConfig(min_pitch=60, max_pitch=64)  # N = 4: columns are pitches 60, 61, 62, 63


def roll(play, replay, vel) -> np.ndarray:
    """An expected (T, N, 3) roll from three explicit (T, N) matrices; `vel` in MIDI velocity (volume = vel / 127)."""
    out = np.stack([np.array(play), np.array(replay), np.array(vel) / 127.0], axis=-1).astype(np.float32)
    assert out.shape[-1] == 3
    return out


def same_notes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == NOTE_DTYPE and b.dtype == NOTE_DTYPE and a.tolist() == b.tolist()


# (pitch, start, end, velocity) in steps, sorted by (start, pitch)
EXPECTED_NOTES = {
    "held": [(60, 0, 4, 100)],
    "restrike": [(61, 0, 2, 100), (61, 2, 4, 80)],
    "touching_off_first": [(62, 0, 2, 90), (62, 2, 5, 70)],
    "touching_on_first": [(62, 0, 2, 90), (62, 2, 5, 70)],
    # 60: union [0, 8) cut at the onsets 0, 2, 5 (the 80 keeps sounding after its own track's note ends at 4,
    # because the other track still holds the pitch); 61: two onsets at step 8 merge, largest velocity, longest end
    "overlap_two_tracks": [(60, 0, 2, 100), (60, 2, 5, 80), (60, 5, 8, 50), (61, 8, 10, 90)],
    "tempo_change": [(60, 0, 4, 100), (61, 2, 6, 90), (63, 7, 8, 80)],
    "several_tracks": [(60, 0, 2, 100), (63, 0, 4, 70), (62, 1, 3, 80), (61, 2, 4, 90), (60, 3, 5, 60)],
    "drums": [(60, 0, 4, 100)],
    "out_of_range": [(60, 0, 2, 100), (63, 1, 3, 100)],
    "leading_rest": [(62, 3, 5, 110)],
    "short_notes": [(60, 0, 1, 100), (61, 1, 2, 100), (62, 2, 3, 100)],
    "velocity0_off": [(60, 0, 3, 100), (61, 3, 5, 90), (61, 5, 6, 70)],
}

_ = 0  # silence in the matrices below
EXPECTED_ROLLS = {
    "held": roll(
        play=[[1, _, _, _]] * 4,
        replay=[[_, _, _, _]] * 4,
        vel=[[100, _, _, _]] * 4,
    ),
    "restrike": roll(
        play=[[_, 1, _, _]] * 4,
        replay=[[_, _, _, _], [_, _, _, _], [_, 1, _, _], [_, _, _, _]],
        vel=[[_, 100, _, _]] * 2 + [[_, 80, _, _]] * 2,
    ),
    "touching_off_first": roll(
        play=[[_, _, 1, _]] * 5,
        replay=[[_, _, _, _], [_, _, _, _], [_, _, 1, _], [_, _, _, _], [_, _, _, _]],
        vel=[[_, _, 90, _]] * 2 + [[_, _, 70, _]] * 3,
    ),
    "overlap_two_tracks": roll(
        play=[[1, _, _, _]] * 8 + [[_, 1, _, _]] * 2,
        replay=[[_, _, _, _]] * 2 + [[1, _, _, _]] + [[_, _, _, _]] * 2 + [[1, _, _, _]] + [[_, _, _, _]] * 4,
        vel=[[100, _, _, _]] * 2 + [[80, _, _, _]] * 3 + [[50, _, _, _]] * 3 + [[_, 90, _, _]] * 2,
    ),
    "several_tracks": roll(
        play=[[1, _, _, 1], [1, _, 1, 1], [_, 1, 1, 1], [1, 1, _, 1], [1, _, _, _]],
        replay=[[_, _, _, _]] * 5,  # pitch 60 sounds again at step 3 after a silent step 2: a fresh onset
        vel=[[100, _, _, 70], [100, _, 80, 70], [_, 90, 80, 70], [60, 90, _, 70], [60, _, _, _]],
    ),
    "leading_rest": roll(
        play=[[_, _, _, _]] * 3 + [[_, _, 1, _]] * 2,
        replay=[[_, _, _, _]] * 5,
        vel=[[_, _, _, _]] * 3 + [[_, _, 110, _]] * 2,
    ),
    "short_notes": roll(
        play=[[1, _, _, _], [_, 1, _, _], [_, _, 1, _]],
        replay=[[_, _, _, _]] * 3,
        vel=[[100, _, _, _], [_, 100, _, _], [_, _, 100, _]],
    ),
    "velocity0_off": roll(
        play=[[1, _, _, _]] * 3 + [[_, 1, _, _]] * 3,
        replay=[[_, _, _, _]] * 5 + [[_, 1, _, _]],
        vel=[[100, _, _, _]] * 3 + [[_, 90, _, _]] * 2 + [[_, 70, _, _]],
    ),
}


def test_every_hand_case_has_expected_notes():
    assert set(EXPECTED_NOTES) == set(HAND_CASES)
    assert set(EXPECTED_ROLLS) <= set(HAND_CASES)


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_case_reads_to_expected_notes(name, parser, tmp_path):
    path = write_spec(HAND_CASES[name], tmp_path / f"{name}.mid")
    assert read_midi(path, CFG, parser).tolist() == EXPECTED_NOTES[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_ROLLS))
def test_hand_case_roll(name):
    notes = make_notes(EXPECTED_NOTES[name])
    r = notes_to_roll(notes, CFG)
    assert r.dtype == np.float32
    np.testing.assert_array_equal(r, EXPECTED_ROLLS[name])


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_case_round_trips(name, tmp_path):
    notes = make_notes(EXPECTED_NOTES[name])
    r = notes_to_roll(notes, CFG)
    assert r.shape == (num_steps(notes), 4, 3)
    back = roll_to_notes(r, CFG)
    assert same_notes(back, notes)  # roll -> notes -> roll is the identity on the grid
    np.testing.assert_array_equal(notes_to_roll(back, CFG), r)
    assert same_notes(decode_notes(encode_notes(notes)), notes)
    path = write_midi(notes, tmp_path / "out" / f"{name}.mid")
    for parser in PARSERS:
        assert same_notes(read_midi(path, CFG, parser), notes)


@pytest.mark.parametrize("parser", PARSERS)
def test_tempo_does_not_move_the_grid(parser, tmp_path):
    spec = HAND_CASES["tempo_change"]
    steady = MidiSpec(spec.tracks, tpq=spec.tpq, tempos=[(0, 120.0)])
    a = read_midi(write_spec(spec, tmp_path / "changes.mid"), CFG, parser)
    b = read_midi(write_spec(steady, tmp_path / "steady.mid"), CFG, parser)
    assert same_notes(a, b)
    # and write_midi's tempo does not either: the same notes come back at any bpm
    for bpm in (33.0, 120.0, 217.5):
        assert same_notes(read_midi(write_midi(a, tmp_path / f"w{bpm}.mid", bpm=bpm), CFG, parser), a)


# (start_tick, end_tick) -> (start_step, end_step) per ticks-per-quarter; a step is tpq / 4 ticks.
# Rule: step = floor(tick / (tpq / 4) + 0.5), i.e. round half up; a note is at least one step long.
QUANTIZE_TABLE = {
    96: [((11, 35), (0, 1)), ((13, 37), (1, 2)), ((12, 36), (1, 2))],  # 0.458/1.458, 0.542/1.542, exactly 0.5/1.5
    400: [((49, 149), (0, 1)), ((51, 151), (1, 2)), ((50, 150), (1, 2))],  # 0.49/1.49, 0.51/1.51, 0.5/1.5
    90: [((11, 33), (0, 1)), ((12, 34), (1, 2)), ((225011, 225033), (10000, 10001))],  # 22.5 ticks: 0.489, 0.533
    220: [((27, 82), (0, 1)), ((28, 83), (1, 2)), ((27, 28), (0, 1))],  # 55 ticks: 0.491/1.491, 0.509/1.509
}


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("tpq", sorted(QUANTIZE_TABLE))
def test_quantization_rounding(tpq, parser, tmp_path):
    rows = QUANTIZE_TABLE[tpq]
    pitches = [60, 61, 62]  # one pitch per row, so that no two rows merge
    spec = MidiSpec([track(*[note(s, e, p, 100) for ((s, e), _), p in zip(rows, pitches)])], tpq=tpq)
    got = read_midi(write_spec(spec, tmp_path / f"q{tpq}.mid"), CFG, parser)
    expected = sorted((p, s, e, 100) for (_, (s, e)), p in zip(rows, pitches))
    assert got.tolist() == sorted(expected, key=lambda r: (r[1], r[0]))


def test_quantize_directly():
    # velocity 0 and out-of-range notes are dropped; ends are at least start + 1
    got = quantize(
        pitch=np.array([60, 61, 62, 64, 59]),
        start_tick=np.array([0, 24, 48, 0, 0]),
        end_tick=np.array([1, 96, 49, 96, 96]),
        velocity=np.array([100, 0, 70, 100, 100]),
        ticks_per_quarter=96,
        cfg=CFG,
    )
    assert got.tolist() == [(60, 0, 1, 100), (62, 2, 3, 70)]
    assert len(quantize(np.array([70]), np.array([0]), np.array([96]), np.array([100]), 96, CFG)) == 0


def test_merge_rules_by_hand():
    # pitch 60: [0, 6) v100, [2, 4) v80, [2, 3) v90 (same onset: largest velocity), [6, 9) v40 touching the run's end
    # pitch 61: [0, 2) v10 and [5, 7) v20, apart
    p = np.array([60, 60, 60, 60, 61, 61])
    s = np.array([0, 2, 2, 6, 0, 5])
    e = np.array([6, 4, 3, 9, 2, 7])
    v = np.array([100, 80, 90, 40, 10, 20])
    got = merge(p, s, e, v)
    assert got.tolist() == [(60, 0, 2, 100), (61, 0, 2, 10), (60, 2, 6, 90), (61, 5, 7, 20), (60, 6, 9, 40)]
    assert replay_flags(got).tolist() == [False, False, True, False, True]
    assert len(merge(np.zeros(0, np.int64), *(np.zeros(0, np.int64),) * 3)) == 0


def merge_reference(p, s, e, v) -> list[tuple]:
    """Brute force, per pitch and step: sounding = any note covers the step; a note starts at every onset."""
    out = []
    for pitch in sorted(set(p.tolist())):
        m = p == pitch
        t_len = int(e[m].max()) + 1
        sounding = np.zeros(t_len, bool)
        onset_vel = np.zeros(t_len, np.int64)
        for si, ei, vi in zip(s[m], e[m], v[m]):
            sounding[si:ei] = True
            onset_vel[si] = max(onset_vel[si], vi)
        t = 0
        while t < t_len:
            if onset_vel[t]:
                u = t + 1
                while sounding[u] and not onset_vel[u]:
                    u += 1
                out.append((pitch, t, u, int(onset_vel[t])))
                t = u
            else:
                assert not sounding[t] or t == 0 or sounding[t - 1]  # a run never starts without an onset
                t += 1
    return sorted(out, key=lambda r: (r[1], r[0]))


def random_grid_notes(rng: np.random.Generator, cfg: ReprConfig, k: int, horizon: int = 120):
    """Unmerged random notes: many overlaps, re-strikes and same-step onsets of one pitch."""
    p = rng.integers(cfg.min_pitch, cfg.max_pitch, size=k)
    s = rng.integers(0, horizon, size=k)
    e = s + rng.integers(1, 24, size=k)
    v = rng.integers(1, 128, size=k)
    return p, s, e, v


@pytest.mark.parametrize("seed", range(12))
def test_merge_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    cfg = ReprConfig(60, 72)
    p, s, e, v = random_grid_notes(rng, cfg, k=int(rng.integers(1, 150)))
    got = merge(p, s, e, v)
    assert got.tolist() == merge_reference(p, s, e, v)
    # canonical: sorted by (start, pitch), one pitch never overlapping itself
    assert np.all(np.diff(got["start"].astype(np.int64) * 256 + got["pitch"]) > 0)
    by_pitch = got[np.lexsort((got["start"], got["pitch"]))]
    same = by_pitch["pitch"][1:] == by_pitch["pitch"][:-1]
    assert np.all(by_pitch["end"][:-1][same] <= by_pitch["start"][1:][same])


@pytest.mark.parametrize("seed", range(10))
def test_random_round_trips(seed, tmp_path):
    """Random polyphonic notes with overlaps and re-strikes, merged, then roll, codec and MIDI round trips."""
    rng = np.random.default_rng(100 + seed)
    cfg = ReprConfig(48, 72)
    notes = merge(*random_grid_notes(rng, cfg, k=int(rng.integers(60, 200)), horizon=300))
    assert replay_flags(notes).any()  # the generator does make re-strikes
    r = notes_to_roll(notes, cfg)
    assert same_notes(roll_to_notes(r, cfg), notes)
    np.testing.assert_array_equal(notes_to_roll(roll_to_notes(r, cfg), cfg), r)
    assert same_notes(decode_notes(encode_notes(notes)), notes)
    path = write_midi(notes, tmp_path / "piece.mid", bpm=float(rng.uniform(50, 200)))
    for parser in PARSERS:
        assert same_notes(read_midi(path, cfg, parser), notes)


def test_empty_cases():
    cfg = ReprConfig(60, 64)
    e = make_notes([])
    assert e.dtype == NOTE_DTYPE and len(e) == 0 and num_steps(e) == 0
    assert notes_to_roll(e, cfg).shape == (0, 4, 3)
    z = notes_to_roll(e, cfg, length=5)
    assert z.shape == (5, 4, 3) and not z.any()
    assert len(roll_to_notes(z, cfg)) == 0
    assert len(roll_to_notes(np.zeros((0, 4, 3), np.float32), cfg)) == 0
    blob = encode_notes(empty_notes())
    back = decode_notes(blob)
    assert back.dtype == NOTE_DTYPE and len(back) == 0


def test_codec_round_trip_keeps_large_values():
    notes = make_notes([(0, 0, 1, 1), (127, 5, 4_000_000_000, 127), (60, 4_000_000_000, 4_000_000_001, 64)])
    assert same_notes(decode_notes(encode_notes(notes)), notes)


def test_window_by_hand():
    # pitch 61 struck at 0, re-struck at 2 (sounds to 6); pitch 63 from 4 to 8
    notes = make_notes([(61, 0, 2, 100), (61, 2, 6, 80), (63, 4, 8, 50)])
    # the window starts at the re-strike: its onset is inside, so replay stays at the window's first step
    w2 = notes_to_roll(notes, CFG, start=2, length=3)
    np.testing.assert_array_equal(w2, roll(
        play=[[_, 1, _, _], [_, 1, _, _], [_, 1, _, 1]],
        replay=[[_, 1, _, _], [_, _, _, _], [_, _, _, _]],
        vel=[[_, 80, _, _], [_, 80, _, _], [_, 80, _, 50]],
    ))
    # the window starts one step after the re-strike: the note is cut at the edge and shows no replay
    w3 = notes_to_roll(notes, CFG, start=3, length=4)
    np.testing.assert_array_equal(w3, roll(
        play=[[_, 1, _, _], [_, 1, _, 1], [_, 1, _, 1], [_, _, _, 1]],
        replay=[[_, _, _, _]] * 4,
        vel=[[_, 80, _, _], [_, 80, _, 50], [_, 80, _, 50], [_, _, _, 50]],
    ))
    # transpose +1: 61 -> 62, 63 -> 64 leaves the range; past the end the window is silent
    wt = notes_to_roll(notes, CFG, start=5, length=4, transpose=1)
    np.testing.assert_array_equal(wt, roll(
        play=[[_, _, 1, _]] + [[_, _, _, _]] * 3,
        replay=[[_, _, _, _]] * 4,
        vel=[[_, _, 80, _]] + [[_, _, _, _]] * 3,
    ))
    assert not notes_to_roll(notes, CFG, start=20, length=3).any()


@pytest.mark.parametrize("seed", range(8))
def test_window_equals_slice_of_full_roll(seed):
    """notes_to_roll(start, length, transpose) == the full roll, sliced in time and shifted in pitch."""
    rng = np.random.default_rng(200 + seed)
    wide = ReprConfig(0, 128)
    cfg = ReprConfig(48, 72)
    notes = merge(*random_grid_notes(rng, ReprConfig(40, 90), k=int(rng.integers(60, 150)), horizon=200))
    full = notes_to_roll(notes, wide, length=num_steps(notes) + 50)  # (T + 50, 128, 3), silent tail
    replay = replay_flags(notes)
    out = np.full((17, cfg.num_notes, 3), 7.0, np.float32)  # a dirty buffer: notes_to_roll must clear it
    edge_seen = 0
    onsets = np.unique(notes["start"][replay])  # aim some windows exactly at re-strikes
    for i in range(30):
        start = int(onsets[i % len(onsets)]) if i % 3 == 0 else int(rng.integers(0, num_steps(notes) + 10))
        length = int(rng.integers(1, 40))
        k = int(rng.integers(-12, 13))
        # window column j is transposed pitch cfg.min_pitch + j, i.e. original pitch cfg.min_pitch + j - k
        expected = full[start : start + length, cfg.min_pitch - k : cfg.max_pitch - k]
        got = notes_to_roll(notes, cfg, start=start, length=length, transpose=k)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(notes_to_roll(notes, cfg, start, length, k, replay=replay), expected)
        if length == 17:
            np.testing.assert_array_equal(notes_to_roll(notes, cfg, start, 17, k, out=out), expected)
        # The window's own notes give back its roll, except a replay on its first step: grid notes carry replay
        # as "starts where the previous note of its pitch ends", and that previous note lies outside the window.
        back = notes_to_roll(roll_to_notes(got, cfg), cfg, length=length)
        edge_replay = got[0, :, 1].copy()
        got[0, :, 1] = 0.0
        np.testing.assert_array_equal(back, got)
        edge_seen += int(edge_replay.any())
    assert notes_to_roll(notes, cfg, 0, 17, 0, out=out) is out
    assert edge_seen > 0  # windows starting on a re-strike were tested (some may fall outside the shifted range)


def test_roll_to_notes_reads_starts():
    # replay where play is off is ignored; replay on a fresh onset after silence is just an onset;
    # a volume change without replay does not start a note (the onset's velocity is kept)
    r = roll(
        play=[[1, _, _, _], [1, _, _, _], [_, _, _, _], [1, _, _, _], [1, _, _, _]],
        replay=[[_, 1, _, _], [_, _, _, _], [_, _, _, _], [1, _, _, _], [_, _, _, _]],
        vel=[[100, 127, _, _], [50, _, _, _], [_, _, _, _], [30, _, _, _], [30, _, _, _]],
    )
    assert roll_to_notes(r, CFG).tolist() == [(60, 0, 2, 100), (60, 3, 5, 30)]


def test_replay_flags_and_num_steps():
    notes = make_notes([(62, 0, 2, 1), (62, 2, 3, 1), (62, 4, 5, 1), (60, 1, 9, 1), (63, 0, 2, 1), (61, 2, 4, 1)])
    # sorted by (start, pitch): (62,0) (63,0) (60,1) (61,2) (62,2) (62,4)
    assert notes["pitch"].tolist() == [62, 63, 60, 61, 62, 62]
    assert replay_flags(notes).tolist() == [False, False, False, False, True, False]
    assert num_steps(notes) == 9


def test_repr_config_validates():
    assert ReprConfig().num_notes == 48
    for lo, hi in [(64, 60), (60, 60), (-1, 10), (0, 129)]:
        with pytest.raises(ValueError, match="pitch range"):
            ReprConfig(lo, hi)
