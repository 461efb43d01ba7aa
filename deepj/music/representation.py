"""One representation, with converters at its edges: tick notes -> grid notes <-> piano roll.

Grid notes are the canonical, compact form (what shards store): a structured array of
`(pitch, start, end, velocity)` on the 16th-note grid, all tracks merged, sorted by (start, pitch), and for one pitch
never overlapping (a re-strike ends the previous note at the step it starts). The piano roll is the dense form the
model sees: `(T, N, 3)` float32 = `[play, replay, volume]` for N = max_pitch - min_pitch notes.

The grid is beat-relative (docs/design.md#the-representation): a step is ticks_per_quarter / 4 MIDI ticks, so tempo and
time-signature events do not move it. Rules, pinned by tests/test_representation.py:
- start step = round(start_tick / tick_step), end step = round(end_tick / tick_step), at least one step long;
- notes outside [min_pitch, max_pitch) and drum-channel notes are dropped;
- tracks merge by logical or; a note struck while the same pitch already sounds (from any track, or an earlier note
  of the same track) is a re-strike: replay = 1 at its first step and the volume becomes its velocity;
- several onsets of one pitch at one step merge into one, with the largest velocity;
- volume = velocity / 127, held for the length of the note.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepj.music.constants import (
    DEFAULT_MAX_PITCH,
    DEFAULT_MIN_PITCH,
    MAX_VELOCITY,
    MIDI_PITCHES,
    NUM_CHANNELS,
    PLAY,
    REPLAY,
    STEPS_PER_BEAT,
    VOLUME,
)

NOTE_DTYPE = np.dtype([("pitch", np.uint8), ("start", np.uint32), ("end", np.uint32), ("velocity", np.uint8)])
# The largest step a piece can hold: grid notes store steps as uint32 (and shards as uint32 deltas), so a larger one
# would wrap silently on the cast. Readers refuse such files before quantizing (midi_io: reason "bad-timing").
MAX_STEP = int(np.iinfo(np.uint32).max)


@dataclass
class ReprConfig:
    min_pitch: int = DEFAULT_MIN_PITCH  # MIDI pitch, inclusive (C2)
    max_pitch: int = DEFAULT_MAX_PITCH  # MIDI pitch, exclusive (C6): 48 notes by default
    # How MIDI files were read into notes: with the sustain / sostenuto pedal applied (deepj.music.pedal). Shards
    # record them, so a checkpoint knows what it learned from; a model reads rolls the same way either way.
    sustain: bool = False
    sostenuto: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_pitch < self.max_pitch <= MIDI_PITCHES:
            raise ValueError(f"pitch range [{self.min_pitch}, {self.max_pitch}) must lie within [0, {MIDI_PITCHES})")

    @property
    def num_notes(self) -> int:
        return self.max_pitch - self.min_pitch

    def to_json(self) -> dict:
        """As manifests and checkpoints store it. The pedal keys only where set: a corpus read without pedals keeps
        the JSON (and so the corpus hash that checkpoints name) it had before pedals were read."""
        out = {"min_pitch": self.min_pitch, "max_pitch": self.max_pitch}
        out.update({k: True for k in ("sustain", "sostenuto") if getattr(self, k)})
        return out

    @classmethod
    def from_json(cls, d: dict) -> ReprConfig:
        """Raises ValueError (a value out of range) or TypeError (a value of the wrong type)."""
        pedals = {k: d.get(k, False) for k in ("sustain", "sostenuto")}
        bad = [k for k, v in pedals.items() if not isinstance(v, bool)]
        if bad:
            raise TypeError(f"{bad[0]} must be true or false, got {pedals[bad[0]]!r}")
        if not all(isinstance(d.get(k), int) and not isinstance(d.get(k), bool) for k in ("min_pitch", "max_pitch")):
            raise TypeError(f"min_pitch and max_pitch must be integers, got {d.get('min_pitch')!r}, "
                            f"{d.get('max_pitch')!r}")
        return cls(d["min_pitch"], d["max_pitch"], **pedals)

    def describe(self) -> str:
        """For messages: 'pitches [36, 84), sustain pedal'."""
        pedals = [f"{k} pedal" for k in ("sustain", "sostenuto") if getattr(self, k)]
        return ", ".join([f"pitches [{self.min_pitch}, {self.max_pitch})"] + (pedals or ["no pedal"]))


def empty_notes() -> np.ndarray:
    return np.zeros(0, dtype=NOTE_DTYPE)


def make_notes(rows) -> np.ndarray:
    """Grid notes from `(pitch, start, end, velocity)` tuples (any order); used by tests and generation."""
    arr = np.array([tuple(r) for r in rows], dtype=NOTE_DTYPE) if len(rows) else empty_notes()
    return arr[np.lexsort((arr["pitch"], arr["start"]))]


def num_steps(notes: np.ndarray) -> int:
    return int(notes["end"].max()) if len(notes) else 0


def silent_steps(notes: np.ndarray) -> int:
    """Steps of [0, num_steps) where no note sounds (leading silence included); for canonical notes (sorted by start).

    A step is silent when it lies after every note begun so far has ended: the gaps between the running maximum of
    the ends and the next start."""
    if len(notes) == 0:
        return 0
    start = notes["start"].astype(np.int64)
    reach = np.maximum.accumulate(notes["end"].astype(np.int64))
    return int(start[0] + np.maximum(start[1:] - reach[:-1], 0).sum())


def quantize(
    pitch: np.ndarray,
    start_tick: np.ndarray,
    end_tick: np.ndarray,
    velocity: np.ndarray,
    ticks_per_quarter: int,
    cfg: ReprConfig,
) -> np.ndarray:
    """Tick-time notes of all (non-drum) tracks -> canonical grid notes. Arrays are 1-D and aligned."""
    pitch = np.asarray(pitch, dtype=np.int64)
    keep = (pitch >= cfg.min_pitch) & (pitch < cfg.max_pitch) & (np.asarray(velocity) > 0)
    if not keep.any():
        return empty_notes()
    tick_step = ticks_per_quarter / STEPS_PER_BEAT
    # Round half up, in float64: ticks are integers well below 2**52, so this is exact enough for any file.
    start = np.floor(np.asarray(start_tick, dtype=np.float64)[keep] / tick_step + 0.5).astype(np.int64)
    end = np.floor(np.asarray(end_tick, dtype=np.float64)[keep] / tick_step + 0.5).astype(np.int64)
    end = np.maximum(end, start + 1)
    return merge(pitch[keep], start, end, np.asarray(velocity, dtype=np.int64)[keep])


def merge(pitch: np.ndarray, start: np.ndarray, end: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """Grid notes that may overlap (several tracks, re-strikes) -> canonical grid notes.

    Per pitch: the sounding set is the union of the notes' intervals; every onset splits it (a re-strike). Vectorised
    over all notes: sort events per pitch, find the sounding runs with a running count, then cut runs at onsets.
    """
    if len(pitch) == 0:
        return empty_notes()
    if start.min() < 0 or end.max() > MAX_STEP:  # the casts to NOTE_DTYPE below would wrap silently
        raise ValueError(f"steps must lie in [0, {MAX_STEP}], got [{start.min()}, {end.max()}]")
    if _packable(pitch, start, end, velocity):
        return _merge_packed(pitch, start, end, velocity)
    return _merge_lexsort(pitch, start, end, velocity)


def _packable(pitch: np.ndarray, start: np.ndarray, end: np.ndarray, velocity: np.ndarray) -> bool:
    """Whether `_merge_packed` can take these: int64 columns with MIDI pitches, byte velocities and steps in
    [0, MAX_STEP] (what quantize passes, and nearly every caller)."""
    return (all(a.dtype == np.int64 for a in (pitch, start, end, velocity)) and pitch.min() >= 0
            and pitch.max() < MIDI_PITCHES and velocity.min() >= 0 and velocity.max() <= 255
            and end.min() >= 0 and start.max() <= MAX_STEP)


def _merge_packed(pitch: np.ndarray, start: np.ndarray, end: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """`_merge_lexsort`'s result, 2-3 times faster on the few hundred notes of a typical file (numpy's per-call cost
    dominates there): each multi-key lexsort becomes one np.sort of int64 values packing the keys in bit fields
    (pitch << 32 | step: a pitch has 7 bits, a step 32), decoded after sorting, so no permutation is gathered and
    ties need no stable order. tests/test_midi_io.py checks both give the same bytes."""
    ps = (pitch << 32) | start
    # Onsets: one per (pitch, start), with the largest velocity (255 - velocity sorts it first).
    key = np.sort((ps << 8) | (255 - velocity))
    first = np.empty(len(key), dtype=bool)
    first[0] = True
    np.not_equal(key[1:] >> 8, key[:-1] >> 8, out=first[1:])
    on_ps, on_v = key[first] >> 8, 255 - (key[first] & 0xFF)

    # Sounding runs per pitch: events (pitch, step, +1 start | -1 end) as pitch << 33 | step << 1 | is-start, so at
    # equal time ends sort before starts; a run ends at an end where the running count returns to 0.
    ev = np.concatenate([(ps << 1) | 1, ((pitch << 32) | end) << 1])
    ev.sort()
    is_end = (ev & 1) == 0
    count = np.cumsum(1 - 2 * is_end.astype(np.int64))
    run_end = ev[is_end & (count == 0)] >> 1  # pitch << 32 | step, sorted

    # Each onset's note ends at the next onset of the same pitch or the end of its run, whichever comes first.
    note_end = run_end[np.searchsorted(run_end, on_ps, side="right")] & 0xFFFFFFFF
    on_p, on_s = on_ps >> 32, on_ps & 0xFFFFFFFF
    same = on_p[1:] == on_p[:-1]
    np.minimum(note_end[:-1], np.where(same, on_s[1:], note_end[:-1]), out=note_end[:-1])

    order = np.argsort((on_s << 7) | on_p)  # by (start, pitch); the pairs are distinct
    out = np.empty(len(on_ps), dtype=NOTE_DTYPE)
    out["pitch"], out["start"], out["end"], out["velocity"] = on_p[order], on_s[order], note_end[order], on_v[order]
    return out


def _merge_lexsort(pitch: np.ndarray, start: np.ndarray, end: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """merge for any integer columns: multi-key lexsorts."""
    # Onsets: one per (pitch, start), with the largest velocity.
    order = np.lexsort((-velocity, start, pitch))
    p, s, v = pitch[order], start[order], velocity[order]
    first = np.ones(len(p), dtype=bool)
    first[1:] = (p[1:] != p[:-1]) | (s[1:] != s[:-1])
    on_p, on_s, on_v = p[first], s[first], v[first]

    # Sounding runs per pitch: +1 at each start, -1 at each end; a run ends where the running count returns to 0.
    ev_p = np.concatenate([pitch, pitch])
    ev_t = np.concatenate([start, end])
    ev_d = np.concatenate([np.ones_like(start), -np.ones_like(end)])
    o = np.lexsort((ev_d, ev_t, ev_p))  # at equal time, ends (-1) before starts (+1): touching notes are two runs
    ev_p, ev_t, ev_d = ev_p[o], ev_t[o], ev_d[o]
    count = np.cumsum(ev_d)  # per pitch the count returns to 0 at its last end, so one cumsum serves all pitches
    run_end_mask = (ev_d == -1) & (count == 0)
    run_end_p, run_end_t = ev_p[run_end_mask], ev_t[run_end_mask]

    # Each onset's note ends at the next onset of the same pitch or the end of its run, whichever comes first.
    key_on = on_p.astype(np.int64) * (1 << 40) + on_s
    key_run_end = run_end_p.astype(np.int64) * (1 << 40) + run_end_t
    idx = np.searchsorted(key_run_end, key_on, side="right")  # first run end strictly after the onset
    run_end = run_end_t[idx]
    next_on = np.full(len(on_s), np.iinfo(np.int64).max)
    same = on_p[1:] == on_p[:-1]
    next_on[:-1][same] = on_s[1:][same]
    note_end = np.minimum(run_end, next_on)

    out = np.empty(len(on_p), dtype=NOTE_DTYPE)
    out["pitch"], out["start"], out["end"], out["velocity"] = on_p, on_s, note_end, on_v
    return out[np.lexsort((out["pitch"], out["start"]))]


def replay_flags(notes: np.ndarray) -> np.ndarray:
    """For canonical notes: True where a note starts exactly where the previous note of its pitch ends (a re-strike)."""
    order = np.lexsort((notes["start"], notes["pitch"]))
    p, s, e = notes["pitch"][order], notes["start"][order], notes["end"][order]
    flags_sorted = np.zeros(len(notes), dtype=bool)
    flags_sorted[1:] = (p[1:] == p[:-1]) & (s[1:] == e[:-1])
    flags = np.empty_like(flags_sorted)
    flags[order] = flags_sorted
    return flags


def notes_to_roll(
    notes: np.ndarray,
    cfg: ReprConfig,
    start: int = 0,
    length: int | None = None,
    transpose: int = 0,
    replay: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Canonical grid notes -> roll `(length, N, 3)` float32 of steps [start, start + length).

    `transpose` shifts pitches by semitones (notes leaving the range are dropped). `replay` may pass precomputed
    `replay_flags(notes)` (the loader caches it per piece). A note that began before `start` is cut at the window
    edge and keeps its replay flag only if its onset lies inside the window.
    """
    if length is None:
        length = max(num_steps(notes) - start, 0)
    n = cfg.num_notes
    if out is None:
        out = np.zeros((length, n, NUM_CHANNELS), dtype=np.float32)
    else:
        out[...] = 0.0
    if len(notes) == 0 or length == 0:
        return out
    if replay is None:
        replay = replay_flags(notes)
    # Notes sorted by start: those starting before the window's end; of those, the ones still sounding inside it.
    hi = np.searchsorted(notes["start"], start + length, side="left")
    sel = notes[:hi]
    rep = replay[:hi]
    live = sel["end"] > start
    sel, rep = sel[live], rep[live]
    key = sel["pitch"].astype(np.int64) + transpose - cfg.min_pitch
    inr = (key >= 0) & (key < n)
    sel, rep, key = sel[inr], rep[inr], key[inr]
    if len(sel) == 0:
        return out
    s = np.maximum(sel["start"].astype(np.int64) - start, 0)
    e = np.minimum(sel["end"].astype(np.int64) - start, length)
    lens = e - s
    total = int(lens.sum())
    # Flat (step, note) indices of every sounding cell: for note i, steps s_i .. e_i - 1.
    offs = np.repeat(s - np.cumsum(lens) + lens, lens) + np.arange(total)
    cols = np.repeat(key, lens)
    out[offs, cols, PLAY] = 1.0
    out[offs, cols, VOLUME] = np.repeat(sel["velocity"].astype(np.float32) / MAX_VELOCITY, lens)
    onset_inside = sel["start"].astype(np.int64) >= start
    r = rep & onset_inside
    out[s[r], key[r], REPLAY] = 1.0
    return out


def roll_to_notes(roll: np.ndarray, cfg: ReprConfig) -> np.ndarray:
    """Roll `(T, N, 3)` -> canonical grid notes. A note starts where play turns on or replay is set."""
    play = roll[..., PLAY] > 0.5  # (T, N)
    replay = (roll[..., REPLAY] > 0.5) & play
    t_len, n = play.shape
    prev = np.zeros_like(play)
    prev[1:] = play[:-1]
    starts = play & (~prev | replay)
    # Transposed to (N, T + 1) so that flat indices run along time per pitch, with a silent guard step at the end.
    play_t = np.zeros((n, t_len + 1), dtype=bool)
    play_t[:, :t_len] = play.T
    starts_t = np.zeros_like(play_t)
    starts_t[:, :t_len] = starts.T
    start_idx = np.flatnonzero(starts_t)
    boundary = np.flatnonzero(starts_t | ~play_t)  # a note ends at the next start or the next silent step
    end_idx = boundary[np.searchsorted(boundary, start_idx, side="right")]
    pitch_i, s = np.divmod(start_idx, t_len + 1)
    e = end_idx - pitch_i * (t_len + 1)
    vel = np.rint(roll[s, pitch_i, VOLUME] * MAX_VELOCITY).clip(1, MAX_VELOCITY)
    out = np.empty(len(start_idx), dtype=NOTE_DTYPE)
    out["pitch"] = pitch_i + cfg.min_pitch
    out["start"], out["end"], out["velocity"] = s, e, vel
    return out[np.lexsort((out["pitch"], out["start"]))]
