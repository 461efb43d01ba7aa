"""The two MIDI readers (symusic, used by preprocessing, and pretty_midi, the reference) against each other and
against the notes each test file was written with; broken files; and the cases where the readers genuinely differ.

Where they differ (pinned in the `test_difference_*` tests, so a library update that changes either side shows up):
- several note-ons of one pitch open at once in ONE track and channel: symusic pairs note-offs first-in first-out
  and drops a note-on that never gets its own note-off; pretty_midi's first note-off closes every open note of the
  pitch (those begun at earlier ticks);
- a zero-length note (note-on and note-off of a pitch at one tick): symusic keeps it (quantized to one step),
  pretty_midi drops it;
- a file whose largest tick exceeds 10**7: pretty_midi refuses it as corrupt (its memory guard), symusic reads it.
Across tracks or channels, and for everything else tested here, the grid notes are the same.
"""

from __future__ import annotations

import numpy as np
import pytest
from midi_files import HAND_CASES, MidiSpec, Q, bad_files, note, off, on, random_spec, track, write_spec

from deepj.music.midi_io import MidiError, read_midi, read_tick_notes, write_midi
from deepj.music.representation import ReprConfig, make_notes, quantize, replay_flags

PARSERS = ("symusic", "pretty_midi")
CFG = ReprConfig(min_pitch=60, max_pitch=64)


def tick_rows(path, parser) -> tuple[list[tuple], int]:
    """The tick-time notes a reader finds, as sorted (pitch, start, end, velocity) rows, and the ticks per quarter."""
    p, s, e, v, tpq = read_tick_notes(path, parser)
    return sorted(zip(p.tolist(), s.tolist(), e.tolist(), v.tolist())), tpq


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_readers_agree_on_hand_cases(name, tmp_path):
    path = write_spec(HAND_CASES[name], tmp_path / f"{name}.mid")
    a, b = (read_midi(path, CFG, parser) for parser in PARSERS)
    assert len(a) > 0 and a.tolist() == b.tolist()


def test_random_files_read_as_written(tmp_path):
    """40 random multi-track files (tpq 90..1000, tempo changes, drums, velocity-0 note-offs, overlaps across tracks,
    type 0 and 1): both readers give the tick notes the file was written with, and the same grid notes as
    quantizing those directly, for two pitch ranges."""
    cfgs = [ReprConfig(55, 76), ReprConfig(36, 84)]
    files = 0
    seen_tpq = set()
    for seed in range(40):
        spec = random_spec(np.random.default_rng(seed))
        tp, ts, te, tv = spec.tick_notes()
        if len(tp) == 0:  # drums only: that is the bad-file tests' "no-notes"
            continue
        path = write_spec(spec, tmp_path / f"r{seed}.mid")
        written = sorted(zip(tp.tolist(), ts.tolist(), te.tolist(), tv.tolist()))
        for parser in PARSERS:
            assert tick_rows(path, parser) == (written, spec.tpq), (seed, parser)
        for cfg in cfgs:
            expected = quantize(tp, ts, te, tv, spec.tpq, cfg).tolist()  # empty if all notes are out of range
            for parser in PARSERS:
                assert read_midi(path, cfg, parser).tolist() == expected, (seed, parser, cfg)
        files += 1
        seen_tpq.add(spec.tpq)
    assert files >= 30 and len(seen_tpq) >= 5, (files, seen_tpq)


def test_random_files_cover_what_they_claim():
    """The generator really makes same-pitch overlaps across tracks, touching notes, re-strikes, tempo changes,
    drums, velocity-0 note-offs and type-0 files."""
    overlaps = touching = restrikes = drums = tempo_changes = vel0 = type0 = 0
    for seed in range(40):
        spec = random_spec(np.random.default_rng(seed))
        per_track = [MidiSpec([t], tpq=spec.tpq).tick_notes() for t in spec.tracks]
        for i, (p1, s1, e1, _) in enumerate(per_track):
            touching += len(set(zip(p1.tolist(), e1.tolist())) & set(zip(p1.tolist(), s1.tolist())))
            for p2, s2, e2, _ in per_track[i + 1 :]:
                same = p1[:, None] == p2[None, :]
                overlaps += int((same & (s1[:, None] < e2[None, :]) & (s2[None, :] < e1[:, None])).sum())
        notes = quantize(*spec.tick_notes(), spec.tpq, ReprConfig(36, 84))
        restrikes += int(replay_flags(notes).sum())
        drums += sum(e[4] == 9 for t in spec.tracks for e in t)
        tempo_changes += len(spec.tempos) > 1
        vel0 += sum(e[1] == "on" and e[3] == 0 for t in spec.tracks for e in t)
        type0 += spec.midi_type == 0
    assert overlaps > 10 and touching > 20 and restrikes > 20, (overlaps, touching, restrikes)
    assert drums > 5 and tempo_changes > 10 and vel0 > 20 and type0 >= 2, (drums, tempo_changes, vel0, type0)


@pytest.mark.parametrize("parser", PARSERS)
def test_bad_files(parser, tmp_path):
    files = bad_files(tmp_path / "bad")
    assert len(files) >= 10
    for name, (path, reason) in files.items():
        with pytest.raises(MidiError) as err:
            read_midi(path, CFG, parser)
        assert err.value.reason == reason, (name, err.value)
        assert str(path) in str(err.value)  # the message names the file


def test_bad_files_same_reason_and_detail(tmp_path):
    """Layout errors are found before either parser runs, so even the detail text agrees there."""
    for name, (path, reason) in bad_files(tmp_path / "bad").items():
        errs = []
        for parser in PARSERS:
            with pytest.raises(MidiError) as err:
                read_midi(path, CFG, parser)
            errs.append((err.value.reason, err.value.detail))
        assert errs[0][0] == errs[1][0] == reason
        if name.startswith(("truncated", "garbage", "header_only")):
            assert errs[0][1] == errs[1][1] and "track" in errs[0][1], (name, errs)


def _good_bytes(tmp_path) -> bytes:
    spec = MidiSpec([track(note(0, 4 * Q, 60), note(4 * Q, 8 * Q, 62)), track(note(0, 16 * Q, 63))])
    return write_spec(spec, tmp_path / "good.mid").read_bytes()


@pytest.mark.parametrize("parser", PARSERS)
def test_chunk_layout(parser, tmp_path):
    """Both readers: trailing bytes and undeclared extra tracks are ignored; an unknown chunk where a declared
    track should be, a longer MThd, or more declared tracks than present is corrupt."""
    good = _good_bytes(tmp_path)
    t0_end = 14 + 8 + int.from_bytes(good[18:22], "big")
    expected = [(60, 0, 4, 100), (63, 0, 16, 100), (62, 4, 8, 100)]
    first_track_only = [(60, 0, 4, 100), (62, 4, 8, 100)]
    ok = {
        "trailing_garbage": (good + b"trailing garbage", expected),
        "undeclared_extra_track": (good + good[14:t0_end], expected),
        "declares_one_track": (good[:10] + (1).to_bytes(2, "big") + good[12:], first_track_only),
    }
    for name, (data, notes) in ok.items():
        (tmp_path / f"{name}.mid").write_bytes(data)
        assert read_midi(tmp_path / f"{name}.mid", CFG, parser).tolist() == notes, name
    unknown = b"XFIH" + (4).to_bytes(4, "big") + b"abcd"
    corrupt = {
        "unknown_chunk_between_tracks": good[:t0_end] + unknown + good[t0_end:],
        "mthd_length_8": good[:4] + (8).to_bytes(4, "big") + good[8:14] + b"\0\0" + good[14:],
        "declares_three_tracks": good[:10] + (3).to_bytes(2, "big") + good[12:],
        "smpte_division": good[:12] + bytes([0xE7, 40]) + good[14:],
        "bad_status_in_track": good[:22] + bytes([0x00, 0x30, 0x31, 0x32]) + good[26:],
    }
    for name, data in corrupt.items():
        (tmp_path / f"{name}.mid").write_bytes(data)
        with pytest.raises(MidiError) as err:
            read_midi(tmp_path / f"{name}.mid", CFG, parser)
        assert err.value.reason == "corrupt", (name, err.value)


def test_unknown_parser(tmp_path):
    path = write_spec(HAND_CASES["held"], tmp_path / "held.mid")
    with pytest.raises(ValueError, match="unknown MIDI parser"):
        read_midi(path, CFG, "music21")


def test_write_midi_file(tmp_path):
    import pretty_midi

    notes = make_notes([(60, 0, 4, 100), (60, 4, 6, 1), (63, 2, 3, 127)])
    path = write_midi(notes, tmp_path / "sub" / "w.mid", bpm=90.0)
    pm = pretty_midi.PrettyMIDI(str(path))
    assert pm.resolution == 480
    assert np.allclose(pm.get_tempo_changes()[1], [90.0])
    # a step is 480 / 4 = 120 ticks; the re-strike at step 4 is a note-off and note-on at one tick
    rows, tpq = tick_rows(path, "symusic")
    assert tpq == 480 and rows == [(60, 0, 480, 100), (60, 480, 720, 1), (63, 240, 360, 127)]


# ---- where the readers differ: pinned exactly, both sides ----


def _both(tmp_path, name, spec, cfg=CFG):
    path = write_spec(spec, tmp_path / f"{name}.mid")
    return {parser: read_midi(path, cfg, parser).tolist() for parser in PARSERS}


def test_difference_overlapping_same_pitch_in_one_track(tmp_path):
    # one track, one channel: on 0 (v100), on 2 (v80), off 4, off 8 (steps)
    spec = MidiSpec([[on(0, 60, 100), on(2 * Q, 60, 80), off(4 * Q, 60), off(8 * Q, 60)]])
    got = _both(tmp_path, "overlap", spec)
    # symusic pairs first-in first-out: [0, 4) and [2, 8); merged: the re-strike sounds to step 8
    assert got["symusic"] == [(60, 0, 2, 100), (60, 2, 8, 80)]
    # pretty_midi's first note-off closes both: [0, 4) and [2, 4); the second note-off is spurious
    assert got["pretty_midi"] == [(60, 0, 2, 100), (60, 2, 4, 80)]
    # the same notes split over two tracks (or two channels) read the same with both readers
    split = MidiSpec([track(note(0, 4 * Q, 60, 100)), track(note(2 * Q, 8 * Q, 60, 80))])
    split_got = _both(tmp_path, "overlap_split", split)
    assert split_got["symusic"] == split_got["pretty_midi"] == [(60, 0, 2, 100), (60, 2, 8, 80)]


def test_difference_restrike_without_its_own_note_off(tmp_path):
    # on 0, on 2 (a re-strike sent as a bare note-on), a single note-off at 4
    spec = MidiSpec([[on(0, 61, 100), on(2 * Q, 61, 80), off(4 * Q, 61)]])
    got = _both(tmp_path, "restrike_one_off", spec)
    assert got["symusic"] == [(61, 0, 4, 100)]  # the second note-on is never closed and is dropped: no re-strike
    assert got["pretty_midi"] == [(61, 0, 2, 100), (61, 2, 4, 80)]


def test_difference_zero_length_note(tmp_path):
    spec = MidiSpec([[on(0, 60, 100), off(0, 60), on(4 * Q, 61, 90), off(8 * Q, 61)]])
    got = _both(tmp_path, "zero_length", spec)
    assert got["symusic"] == [(60, 0, 1, 100), (61, 4, 8, 90)]  # duration 0 ticks -> one step
    assert got["pretty_midi"] == [(61, 4, 8, 90)]  # pretty_midi never closes a note at its own onset tick


def test_difference_largest_tick_over_ten_million(tmp_path):
    spec = MidiSpec([track(note(0, 4 * Q, 60), note(10_000_008, 10_000_008 + 4 * Q, 62))])
    path = write_spec(spec, tmp_path / "far.mid")
    assert read_midi(path, CFG, "symusic").tolist() == [(60, 0, 4, 100), (62, 416667, 416671, 100)]
    with pytest.raises(MidiError) as err:
        read_midi(path, CFG, "pretty_midi")
    assert err.value.reason == "corrupt" and "largest tick" in err.value.detail
