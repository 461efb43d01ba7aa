"""Real MIDI test files, written with mido so that every tick, event order and tempo event is exactly as specified.

A file is described by a `MidiSpec`: per track a list of raw events `(tick, kind, pitch, velocity, channel)` with
kind "on" / "off" ("on" with velocity 0 is the running-status note-off many files use), or "cc" with the controller
number and value in the pitch and velocity places (`cc(tick, 64, 127)`: the sustain pedal down). Events of one track are
written in tick order, keeping the given order at equal ticks, because the order of a note-off and a note-on of the
same pitch at one tick matters to the parsers. Tempo events go into the first track (the conductor track of type 1).

Used by tests/test_representation.py (hand cases with expected arrays) and tests/test_midi_io.py (parser agreement
on hand, randomized and broken files).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mido
import numpy as np

DRUM = 9  # zero-based General MIDI drum channel
TPQ = 96  # ticks per quarter of the hand cases
Q = TPQ // 4  # ticks per 16th-note step at TPQ: hand cases write ticks as k * Q

Event = tuple  # (tick, "on" | "off", pitch, velocity, channel)


def on(tick: int, pitch: int, velocity: int = 100, channel: int = 0) -> Event:
    return (int(tick), "on", int(pitch), int(velocity), int(channel))


def off(tick: int, pitch: int, channel: int = 0) -> Event:
    return (int(tick), "off", int(pitch), 0, int(channel))


def cc(tick: int, controller: int, value: int, channel: int = 0) -> Event:
    return (int(tick), "cc", int(controller), int(value), int(channel))


def note(start: int, end: int, pitch: int, velocity: int = 100, channel: int = 0) -> list[Event]:
    return [on(start, pitch, velocity, channel), off(end, pitch, channel)]


def track(*notes_or_events) -> list[Event]:
    """One track from `note(...)` pairs and single events, sorted by tick with note-offs before note-ons at a tick
    (what a sequencer writes; so a note ending where the next one of its pitch starts is never paired wrongly)."""
    events = [e for x in notes_or_events for e in (x if isinstance(x, list) else [x])]
    return sorted(events, key=lambda e: (e[0], e[1] == "on" and e[3] > 0))


@dataclass
class MidiSpec:
    tracks: list[list[Event]]
    tpq: int = TPQ
    tempos: list[tuple[int, float]] = field(default_factory=lambda: [(0, 120.0)])  # (tick, bpm)
    midi_type: int = 1

    def tick_notes(self) -> tuple[np.ndarray, ...]:
        """The notes the file holds, paired first-in first-out per (track, channel, pitch), drums excluded:
        `(pitch, start, end, velocity)` in ticks. Valid for specs whose same-pitch notes never overlap within one
        track and channel (the randomized ones), where every reader must agree."""
        rows = []
        for events in self.tracks:
            open_notes: dict[tuple[int, int], list[tuple[int, int]]] = {}
            for tick, kind, pitch, vel, ch in sorted(events, key=lambda e: e[0]):
                key = (ch, pitch)
                if kind == "on" and vel > 0:
                    open_notes.setdefault(key, []).append((tick, vel))
                elif kind != "cc" and open_notes.get(key):
                    start, v = open_notes[key].pop(0)
                    if ch != DRUM:
                        rows.append((pitch, start, tick, v))
        arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
        return arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]


def _message(kind: str, pitch: int, velocity: int, channel: int) -> mido.Message:
    if kind == "cc":
        return mido.Message("control_change", control=pitch, value=velocity, channel=channel)
    if kind == "on":
        return mido.Message("note_on", note=pitch, velocity=velocity, channel=channel)
    return mido.Message("note_off", note=pitch, velocity=0, channel=channel)


def write_spec(spec: MidiSpec, path: str | Path) -> Path:
    """Write `spec` as a standard MIDI file at `path` (type 0 merges all tracks into one)."""
    path = Path(path)
    tracks = []
    for i, events in enumerate(spec.tracks):
        timed = [(e[0], _message(*e[1:])) for e in events]
        if i == 0:
            tempo = [(t, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))) for t, bpm in spec.tempos]
            timed = tempo + timed  # at a tick, tempo first
        timed.sort(key=lambda x: x[0])  # stable: keeps the given order at equal ticks
        tracks.append(timed)
    if not tracks:
        tracks = [[(t, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))) for t, bpm in spec.tempos]]
    if spec.midi_type == 0:
        tracks = [sorted((x for t in tracks for x in t), key=lambda x: x[0])]
    mf = mido.MidiFile(type=spec.midi_type, ticks_per_beat=spec.tpq)
    for timed in tracks:
        mt = mido.MidiTrack()
        now = 0
        for tick, msg in timed:
            mt.append(msg.copy(time=tick - now))
            now = tick
        mt.append(mido.MetaMessage("end_of_track", time=0))
        mf.tracks.append(mt)
    mf.save(str(path))
    return path


def random_spec(rng: np.random.Generator, pitch_lo: int = 52, pitch_hi: int = 80) -> MidiSpec:
    """A random multi-track piece: arbitrary tick positions (off the grid), overlaps across tracks and channels
    (re-strikes once merged), touching notes, velocity-0 note-offs, a random tpq, tempo changes, sometimes a drum
    track or drum channel, sometimes type 0. Same-pitch notes never overlap within one track and channel (the
    readers pair such notes differently; see test_midi_io) and no note has zero length."""
    tpq = int(rng.choice([90, 96, 100, 120, 220, 384, 480, 1000]))
    midi_type = 0 if rng.random() < 0.15 else 1
    n_tracks = 1 if midi_type == 0 else int(rng.integers(1, 5))  # type 0 merges tracks: keep lanes apart
    tracks = []
    for ti in range(n_tracks):
        is_drum_track = ti > 0 and rng.random() < 0.2
        weights = [0.4, 0.2, 0.15, 0.15, 0.1]
        channels = [DRUM] if is_drum_track else [int(c) for c in rng.choice([0, 1, 2, 3, DRUM], size=2, p=weights)]
        events: list[Event] = []
        lanes: set[tuple[int, int]] = set()
        for _ in range(int(rng.integers(1, 7))):  # lanes: a sequence of non-overlapping notes of one (channel, pitch)
            ch = channels[int(rng.integers(len(channels)))]
            pitch = int(rng.integers(pitch_lo, pitch_hi))
            if (ch, pitch) in lanes:
                continue
            lanes.add((ch, pitch))
            t = int(rng.integers(0, 8 * tpq))
            for _ in range(int(rng.integers(1, 8))):
                dur = int(rng.integers(1, 3 * tpq))
                vel = int(rng.integers(1, 128))
                end = t + dur
                events.append(on(t, pitch, vel, ch))
                events.append(on(end, pitch, 0, ch) if rng.random() < 0.3 else off(end, pitch, ch))
                t = end + (0 if rng.random() < 0.3 else int(rng.integers(1, 2 * tpq)))
        tracks.append(track(*events))
    tempos = [(0, float(rng.uniform(40, 200)))]
    for _ in range(int(rng.integers(0, 4))):
        tempos.append((int(rng.integers(1, 12 * tpq)), float(rng.uniform(30, 240))))
    return MidiSpec(tracks=tracks, tpq=tpq, tempos=sorted(tempos), midi_type=midi_type)


def bad_files(folder: str | Path) -> dict[str, tuple[Path, str]]:
    """Unusable MIDI files in `folder`: name -> (path, the MidiError reason every reader must give)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = write_spec(MidiSpec([track(note(0, 4 * Q, 60), note(4 * Q, 8 * Q, 62)), track(note(0, 16 * Q, 64))]),
                      folder / "good.mid").read_bytes()
    header = good[:14]  # MThd, length 6, format, 2 tracks, tpq
    first_track_end = 14 + 8 + int.from_bytes(good[18:22], "big")
    out: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, reason: str) -> None:
        p = folder / name
        p.write_bytes(data)
        out[name] = (p, reason)

    put("garbage_after_header.mid", header + bytes((i * 37 + 11) % 256 for i in range(300)), "corrupt")
    put("truncated_half.mid", good[: len(good) // 2], "corrupt")
    put("truncated_last_byte.mid", good[:-1], "corrupt")
    put("truncated_at_track_boundary.mid", good[:first_track_end], "corrupt")  # header declares 2 tracks, 1 present
    put("header_only.mid", header, "corrupt")
    put("empty.mid", b"", "empty")
    put("text.mid", b"this is not a MIDI file\nbut it is named like one\n", "not-midi")
    zero = write_spec(MidiSpec(tracks=[], tempos=[(0, 100.0)]), folder / "zero_notes.mid")
    out["zero_notes.mid"] = (zero, "no-notes")
    drums = write_spec(MidiSpec([track(note(0, 8 * Q, 36, channel=DRUM))]), folder / "drums_only.mid")
    out["drums_only.mid"] = (drums, "no-notes")
    d = folder / "directory.mid"
    d.mkdir()
    out["directory.mid"] = (d, "unreadable")
    (folder / "good.mid").unlink()
    return out


def _hand_cases() -> dict[str, MidiSpec]:
    """Small pieces at TPQ = 96 (a step is Q = 24 ticks) for ReprConfig(min_pitch=60, max_pitch=64); the expected
    grid notes and rolls are written out in tests/test_representation.py."""
    return {
        # one note held for 4 steps
        "held": MidiSpec([track(note(0, 4 * Q, 60, 100))]),
        # struck again at step 2 while sounding, both note-offs at step 4 (the pairing every reader agrees on)
        "restrike": MidiSpec([[on(0, 61, 100), on(2 * Q, 61, 80), off(4 * Q, 61), off(4 * Q, 61)]]),
        # same pitch, end == next start; note-off written before the note-on at the shared tick
        "touching_off_first": MidiSpec([track(note(0, 2 * Q, 62, 90), note(2 * Q, 5 * Q, 62, 70))]),
        # the same, the note-on written before the note-off at the shared tick
        "touching_on_first": MidiSpec([[on(0, 62, 90), on(2 * Q, 62, 70), off(2 * Q, 62), off(5 * Q, 62)]]),
        # one pitch overlapping across two tracks; two onsets of one pitch at one step (step 8) in two tracks
        "overlap_two_tracks": MidiSpec([
            track(note(0, 6 * Q, 60, 100), note(8 * Q, 10 * Q, 61, 40)),
            track(note(2 * Q, 4 * Q, 60, 80), note(5 * Q, 8 * Q, 60, 50), note(8 * Q, 9 * Q, 61, 90)),
        ]),
        # tempo at tick 0 and twice mid-piece (the grid counts ticks, so the steps must not move)
        "tempo_change": MidiSpec(
            [track(note(0, 4 * Q, 60), note(2 * Q, 6 * Q, 61, 90), note(7 * Q, 8 * Q, 63, 80))],
            tempos=[(0, 120.0), (3 * Q, 40.0), (7 * Q, 200.0)],
        ),
        "several_tracks": MidiSpec([
            track(note(0, 2 * Q, 60, 100), note(2 * Q, 4 * Q, 61, 90)),
            track(note(Q, 3 * Q, 62, 80)),
            track(note(0, 4 * Q, 63, 70), note(3 * Q, 5 * Q, 60, 60)),
        ]),
        # drums on channel 9 inside a piano track and as a whole track: excluded although in range
        "drums": MidiSpec([
            track(note(0, 4 * Q, 60), note(0, 4 * Q, 61, channel=DRUM)),
            track(note(2 * Q, 6 * Q, 62, channel=DRUM), note(6 * Q, 7 * Q, 63, channel=DRUM)),
        ]),
        # 59 and 64 lie just outside [60, 64); 20 and 100 far outside
        "out_of_range": MidiSpec([
            track(note(0, 2 * Q, 59), note(0, 2 * Q, 60), note(Q, 3 * Q, 63), note(Q, 3 * Q, 64), note(0, Q, 20),
                  note(2 * Q, 4 * Q, 100)),
        ]),
        # the first note starts at step 3: the leading silence is part of the piece
        "leading_rest": MidiSpec([track(note(3 * Q, 5 * Q, 62, 110))]),
        # notes of 5, 7 and 2 ticks (a step is 24): each kept as one step
        "short_notes": MidiSpec([track(note(0, 5, 60), note(13, 20, 61), note(2 * Q + 1, 2 * Q + 3, 62))]),
        # note_on with velocity 0 ends a note; at step 5 it ends one note and a new one of that pitch starts
        "velocity0_off": MidiSpec([[
            on(0, 60, 100), on(3 * Q, 60, 0), on(3 * Q, 61, 90), on(5 * Q, 61, 0), on(5 * Q, 61, 70), on(6 * Q, 61, 0),
        ]]),
    }


HAND_CASES = _hand_cases()


# ---- raw bytes: what mido will not write (huge delta times, format 2 and 3), written byte by byte ----

BIG_DELTA = 0x0FFFFFFF  # the largest delta time a MIDI variable-length quantity holds (2**28 - 1 ticks)
TEXT = bytes([0xFF, 0x01, 0x00])  # an empty text meta event: something to hang a delta time on


def vlq(n: int) -> bytes:
    """A MIDI variable-length quantity (7 bits a byte, high bit set on all but the last)."""
    assert 0 <= n <= BIG_DELTA
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def raw_midi(tracks: list[list[tuple[int, bytes]]], tpq: int = TPQ, fmt: int = 1) -> bytes:
    """A standard MIDI file from per-track (delta ticks, event bytes) lists; each track gets its end-of-track."""
    out = b"MThd" + (6).to_bytes(4, "big") + fmt.to_bytes(2, "big") + len(tracks).to_bytes(2, "big") + \
        tpq.to_bytes(2, "big")
    for events in tracks:
        body = b"".join(vlq(d) + e for d, e in events) + b"\x00\xff\x2f\x00"
        out += b"MTrk" + len(body).to_bytes(4, "big") + body
    return out


def raw_on(pitch: int, velocity: int = 100) -> bytes:
    return bytes([0x90, pitch, velocity])


def raw_off(pitch: int) -> bytes:
    return bytes([0x80, pitch, 0])


def raw_notes(steps: int, q: int = Q, pitch: int = 60) -> list[tuple[int, bytes]]:
    """`steps` one-step notes, one after another (a piece that sounds throughout), at `q` ticks per step."""
    ev: list[tuple[int, bytes]] = []
    for s in range(steps):
        ev += [(0, raw_on(pitch + s % 12)), (q, raw_off(pitch + s % 12))]
    return ev


def timing_files(folder: str | Path) -> dict[str, tuple[Path, str]]:
    """Files whose time is out of bounds, and the reason preprocessing gives with its default settings
    (--max-steps 100000, --max-silence 0.9) whichever parser reads them: name -> (path, reason)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    piece = raw_notes(32)  # 32 steps at TPQ = 96
    gap = lambda k: [(BIG_DELTA, TEXT)] * k  # noqa: E731 (k * 268 M ticks of nothing)
    files = {
        # a second note near tick 1.07e9: 44.7 M steps, 99.99 % silent (pretty_midi refuses it for its largest tick)
        "far_note.mid": (raw_midi([piece + gap(4) + [(0, raw_on(62)), (Q, raw_off(62))]]), "too-long"),
        # the notes end at step 32, the end-of-track event lies 11 M steps later: the file lasts that long
        "far_end_of_track.mid": (raw_midi([piece + gap(1)]), "too-long"),
        # a song-position message (system common) before the gap: both parsers read on past it, so must the check
        "far_after_song_position.mid": (raw_midi([piece + [(0, bytes([0xF2, 1, 2]))] + gap(1) +
                                                  [(0, raw_on(62)), (Q, raw_off(62))]]), "too-long"),
        # past 2**31 ticks: symusic's int32 ticks turn negative (start -2147483560)
        "negative_ticks.mid": (raw_midi([piece + gap(8) + [(100, raw_on(62)), (Q, raw_off(62))]]), "bad-timing"),
        # past 2**32 ticks: symusic's ticks wrap to small numbers again, the second note reads as tick 848
        "wrapped_ticks.mid": (raw_midi([piece + gap(16) + [(96, raw_on(62)), (Q, raw_off(62))]]), "bad-timing"),
        # ticks below 2**31, but 1 tick per quarter makes 4 steps a tick: 5.4e9 steps, past the uint32 steps
        "step_overflow.mid": (raw_midi([[(0, raw_on(60)), (8, raw_off(60))] + gap(5)], tpq=1), "bad-timing"),
        # 4 sounding steps, then 396 silent ones before a last note: 98 % silence
        "mostly_silent.mid": (raw_midi([raw_notes(4) + [(396 * Q, raw_on(62)), (Q, raw_off(62))]]),
                              "mostly-silent"),
        # independent sequences: their notes never sound together
        "type2.mid": (raw_midi([piece, raw_notes(32, pitch=70)], fmt=2), "type-2"),
        "format3.mid": (raw_midi([piece], fmt=3), "corrupt"),
    }
    out = {}
    for name, (data, reason) in files.items():
        (folder / name).write_bytes(data)
        out[name] = (folder / name, reason)
    return out
