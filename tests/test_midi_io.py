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

from pathlib import Path

import numpy as np
import pytest
from midi_files import (
    BIG_DELTA,
    HAND_CASES,
    TEXT,
    MidiSpec,
    Q,
    bad_files,
    note,
    off,
    on,
    random_spec,
    raw_midi,
    raw_notes,
    raw_off,
    raw_on,
    timing_files,
    track,
    write_spec,
)

from deepj.music import midi_io
from deepj.music.midi_io import MAX_TICK, MidiError, read_midi, read_tick_notes, write_midi
from deepj.music.representation import (
    MAX_STEP,
    ReprConfig,
    _merge_lexsort,
    _merge_packed,
    _packable,
    make_notes,
    merge,
    quantize,
    replay_flags,
)

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


# ---- the timing check's fast path: a vectorised bound, the event walk only where the bound cannot decide ----


def _plain_walk(data: bytes, pos: int, end: int) -> int:
    """track_ticks as first written (one varlen call per quantity): the reference for the inlined walk."""
    ticks = running = 0
    try:
        while pos < end:
            delta, pos = midi_io.varlen(data, pos)
            ticks += delta
            status = data[pos]
            if status < 0x80:
                if not running:
                    break
                pos += 1 if 0xC0 <= running < 0xE0 else 2
            elif status < 0xF0:
                running = status
                pos += 2 if 0xC0 <= status < 0xE0 else 3
            elif status in (0xFF, 0xF0, 0xF7):
                size, pos = midi_io.varlen(data, pos + (2 if status == 0xFF else 1))
                pos += size
            elif status in midi_io.SYSTEM_DATA:
                pos += 1 + midi_io.SYSTEM_DATA[status]
            else:
                break
    except IndexError:
        pass
    return ticks


def _walked_verdict(data: bytes, max_steps: int | None):
    """The timing verdict from walking every track (the check before the fast path): None or (reason, detail)."""
    tracks = midi_io._check_chunks("f.mid", data)
    tpq = int.from_bytes(data[12:14], "big")
    last = max((_plain_walk(data, a, b) for a, b in tracks), default=0)
    steps = int(np.floor(last / (tpq / 4) + 0.5))
    if last > MAX_TICK:
        return "bad-timing", f"an event at tick {last}, beyond {MAX_TICK} (ticks are 32-bit)"
    if steps > MAX_STEP:
        return "bad-timing", (f"the file lasts {steps} steps (tick {last} at {tpq} per quarter), more than the "
                              f"{MAX_STEP} a piece can hold")
    if max_steps is not None and steps > max_steps:
        return "too-long", (f"the file lasts {steps} steps (its last event at tick {last}, {tpq} per quarter) > "
                            f"--max-steps {max_steps}")
    return None


def _verdict(data: bytes, max_steps: int | None):
    tracks = midi_io._check_chunks("f.mid", data)
    try:
        midi_io._check_timing("f.mid", data, tracks, int.from_bytes(data[12:14], "big"), max_steps)
    except MidiError as e:
        return e.reason, e.detail
    return None


def _test_bytes(tmp_path) -> list[bytes]:
    """Real files (random pieces, the timing files), and the same with random damage: flipped bytes, inserted
    varlen-looking runs, sysex, meta and system messages, running status, cut tracks."""
    rng = np.random.default_rng(7)
    files = [write_spec(random_spec(rng), tmp_path / f"r{i}.mid").read_bytes() for i in range(12)]
    files += [path.read_bytes() for path, _ in timing_files(tmp_path / "timing").values()]
    pieces = [bytes([0xF0, 3, 1, 2, 0xF7]), bytes([0xFF, 0x7F, 0x82, 0x00]) + bytes(256), bytes([0xF2, 1, 2]),
              bytes([0xF8]), bytes([0xC0, 5]), bytes([0x40, 0x41]), bytes([0xF4]), bytes([0x81, 0x80, 0x80, 0x80, 0])]
    damaged = []
    for k in range(300):
        d = bytearray(files[k % len(files)])
        for _ in range(int(rng.integers(1, 8))):
            at = int(rng.integers(14, len(d)))
            kind = rng.random()
            if kind < 0.4:
                d[at] = int(rng.integers(256))
            elif kind < 0.6:
                d[at:at] = bytes(0x80 | int(b) for b in rng.integers(0, 128, int(rng.integers(1, 7)))) + b"\x05"
            elif kind < 0.9:
                d[at:at] = pieces[int(rng.integers(len(pieces)))]
            else:
                del d[at : at + int(rng.integers(1, 4))]
        damaged.append(bytes(d))
    return files + damaged


def _track_ranges(data: bytes) -> list[tuple[int, int]]:
    """The chunks as the walk would get them, leniently: whatever fits (damaged sizes included)."""
    out, pos = [], 14
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], "big")
        out.append((pos + 8, min(pos + 8 + size, len(data))))
        pos += 8 + size
    return out


def test_track_ticks_is_the_plain_walk_and_tick_bounds_bound_it(tmp_path):
    """On real and damaged files, and on arbitrary windows of them: the inlined walk gives the plain walk's ticks,
    and every track's bound (where there is one) is at least its ticks."""
    rng = np.random.default_rng(3)
    bounded = 0
    for data in _test_bytes(tmp_path):
        ranges = _track_ranges(data)
        ranges += [tuple(sorted(int(x) for x in rng.integers(0, len(data) + 1, 2))) for _ in range(4)]
        for (a, b), bound in zip(ranges, midi_io.tick_bounds(data, ranges)):
            ticks = _plain_walk(data, a, b)
            assert midi_io.track_ticks(data, a, b) == ticks, (a, b)
            assert bound == -1 or bound >= ticks, (a, b, bound, ticks)
            bounded += bound >= 0
    assert bounded > 1000  # the bound is there for nearly every track, not always -1


def _near_limit(steps: int, tpq: int = 960) -> bytes:
    """Two tracks: a short one (its bound is below 150 steps), and one lasting exactly `steps` steps."""
    return raw_midi([raw_notes(4, q=tpq // 4), raw_notes(steps, q=tpq // 4, pitch=48)], tpq=tpq)


def test_fast_path_verdicts_are_the_walked_verdicts(tmp_path, monkeypatch):
    """Every verdict, with its detail text, equals walking every track: on real and damaged files, and on a file near
    --max-steps whose bound is far above it (there the walk decides; the bound alone would refuse it)."""
    for data in _test_bytes(tmp_path):
        if len(data) < 14 or not data.startswith(b"MThd") or not 0 < int.from_bytes(data[12:14], "big") < 0x8000:
            continue
        try:
            midi_io._check_chunks("f.mid", data)
        except MidiError:
            continue
        for max_steps in (None, 100_000, 64, 32, 31):
            assert _verdict(data, max_steps) == _walked_verdict(data, max_steps), max_steps

    walks = []
    walk = midi_io.track_ticks
    monkeypatch.setattr(midi_io, "track_ticks", lambda *a: walks.append(a) or walk(*a))
    data = _near_limit(200)
    tracks = midi_io._check_chunks("f.mid", data)
    short, long = (int(b) // 240 for b in midi_io.tick_bounds(data, tracks))
    assert short < 150 and long > 10 * 200  # the long track's bound clears 200 steps only for a far higher limit
    bound_steps = long
    for max_steps in (None, 10**7, bound_steps + 1, bound_steps - 1, 201, 200, 199, 150):
        walks.clear()
        assert _verdict(data, max_steps) == _walked_verdict(data, max_steps), max_steps
        if max_steps is None or max_steps > bound_steps:
            assert walks == [], max_steps  # decided by the bound alone
        else:
            assert len(walks) == 1, max_steps  # only the long track is walked; the short one is bounded
    assert _verdict(data, 200) is None and _verdict(data, 199)[0] == "too-long"
    # ticks past 2**31 and steps past MAX_STEP: refused as before, after a walk
    far = raw_midi([raw_notes(4), [(BIG_DELTA, TEXT)] * 9 + [(0, raw_on(62)), (Q, raw_off(62))]])
    assert _verdict(far, None) == _walked_verdict(far, None) and _verdict(far, None)[0] == "bad-timing"


def test_read_bytes_reads_past_the_stated_size(tmp_path):
    """A regular file longer than its stat says (one that grew, or a /proc file of size 0) is read on to the cap."""
    proc = Path("/proc/self/mountinfo")
    if not proc.is_file() or proc.stat().st_size != 0:
        pytest.skip("no /proc file of stated size 0 here")
    data = midi_io._read_bytes(proc, 2**20)
    assert len(data) > 0 and data.startswith(proc.read_bytes()[:20])
    with pytest.raises(MidiError) as err:
        midi_io._read_bytes(proc, 10)
    assert err.value.reason == "too-large" and "more than the limit of 10 bytes" in err.value.detail


def test_merge_packed_is_merge_lexsort():
    """The quantizer's fast merge (packed int64 keys) gives the bytes of the multi-key lexsort merge: overlaps across
    notes, equal onsets, equal velocities, velocity 0, steps near MAX_STEP, zero-length notes; other inputs take the
    lexsort path."""
    rng = np.random.default_rng(11)
    for i in range(400):
        k = int(rng.integers(1, 80))
        pitch = rng.integers(0, 128, k) if i % 2 else rng.integers(60, 63, k)
        start = rng.integers(0, int(rng.integers(1, 40)), k)
        end = start + rng.integers(1, 12, k)
        vel = rng.integers(0, 128, k) if i % 3 else np.full(k, 90)
        if i % 5 == 0:  # at the top of the step range
            end = np.minimum(end + MAX_STEP - 60, MAX_STEP)
            start = np.minimum(start + MAX_STEP - 60, end - 1)
        assert _packable(pitch, start, end, vel)
        assert _merge_packed(pitch, start, end, vel).tobytes() == _merge_lexsort(pitch, start, end, vel).tobytes(), i
    for i in range(300):  # zero-length notes too (quantize never makes them): the same notes, or the same error
        k = int(rng.integers(1, 30))
        cols = rng.integers(60, 63, k), rng.integers(0, 20, k), rng.integers(0, 4, k), rng.integers(0, 128, k)
        cols = cols[0], cols[1], cols[1] + cols[2], cols[3]
        got = []
        for fn in (_merge_packed, _merge_lexsort):
            try:
                got.append(fn(*cols).tobytes())
            except IndexError:  # an onset with no run end after it
                got.append(IndexError)
        assert got[0] == got[1], i
    odd = (np.array([60, 61], np.int32), np.array([0, 1]), np.array([2, 3]), np.array([5, 6]))
    assert not _packable(*odd) and merge(*odd).tolist() == [(60, 0, 2, 5), (61, 1, 3, 6)]
