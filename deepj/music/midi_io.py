"""MIDI files at the edges of the representation: read into grid notes, write grid notes back.

pretty_midi is the reference reader and the writer. symusic (a C++ parser) is the fast reader used by preprocessing;
tests/test_midi_io.py checks that both yield the same grid notes on every test file, corrupt ones included.

Before either parser runs, the file itself is checked, so that both give the same verdict and neither is handed what
it cannot take (docs/design.md#the-representation):
- `not-a-file`: a FIFO, device or socket (or a link to one) named like a MIDI file; reading it would block forever or
  never end. A directory stays `unreadable`;
- `too-large`: more than `max_bytes` (MIDI files are small: a 2-hour performance is about 1 MB);
- `corrupt`: the chunk layout, a format other than 0, 1, 2, or SMPTE time;
- `type-2`: a format-2 file holds independent sequences (patterns of a sequencer bank); read as one piece, its
  tracks would sound together, which they never do. Which sequence is "the piece" is unknowable, so it is refused;
- `bad-timing`: a last event beyond tick 2**31 - 1 (symusic keeps ticks in int32: later starts come back negative,
  and past 2**32 as small numbers again) or a piece longer than the representation's MAX_STEP steps;
- `too-long`: a file lasting more than `max_steps` steps (when given). pretty_midi builds arrays as long as the
  file's last tick, so this is measured on every event's tick, not on the notes alone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

import numpy as np

from deepj.music.constants import MAX_VELOCITY, STEPS_PER_BEAT
from deepj.music.representation import MAX_STEP, ReprConfig, quantize

Parser = Literal["symusic", "pretty_midi"]
MIDI_MAGIC = b"MThd"
WRITE_RESOLUTION = 480  # ticks per quarter in the files we write; divisible by 4 so the grid maps exactly
MAX_FILE_BYTES = 64 * 2**20  # default size cap: MIDI files are small, far larger is a mistake (or /dev/zero)
MAX_TICK = 2**31 - 1  # symusic's ticks are int32


class MidiError(Exception):
    """A MIDI file that cannot be used. `reason` is a short machine-readable word for reports."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket"}


def _regular(path: Path, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise MidiError(path, "unreadable", "Is a directory")  # the words read_bytes gave: listed as before
    if not stat.S_ISREG(st.st_mode):
        raise MidiError(path, "not-a-file", f"{_KINDS.get(stat.S_IFMT(st.st_mode), 'not a regular file')}, "
                        "not a file")


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, for a regular file of at most `max_bytes`; checked before anything is read."""
    try:
        _regular(path, os.stat(path))  # follows links: a link to /dev/zero is a device
        # O_NONBLOCK: should a FIFO replace the file after the stat, opening it must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise MidiError(path, "unreadable", e.strerror or str(e)) from None
    with os.fdopen(fd, "rb") as f:
        try:
            st = os.fstat(fd)
            _regular(path, st)  # the file opened is the file checked
            if st.st_size > max_bytes:
                raise MidiError(path, "too-large", f"{st.st_size} bytes > the limit of {max_bytes} (--max-file-mb)")
            # Bounded, should the file grow meanwhile. Asked for its size + 1 first: read(max_bytes + 1) allocates
            # that much up front (64 MB: 25 us a file, as long as reading it); a file that grew is read on to the cap.
            data = f.read(st.st_size + 1)
            if len(data) > st.st_size:
                data += f.read(max_bytes + 1 - len(data))
        except OSError as e:
            raise MidiError(path, "unreadable", e.strerror or str(e)) from None
    if len(data) > max_bytes:
        raise MidiError(path, "too-large", f"more than the limit of {max_bytes} bytes (--max-file-mb)")
    return data


def _check_file(path: Path, max_bytes: int = MAX_FILE_BYTES,
                max_steps: int | None = None) -> tuple[bytes, list[tuple[int, int]]]:
    data = _read_bytes(path, max_bytes)
    if len(data) == 0:
        raise MidiError(path, "empty")
    if not data.startswith(MIDI_MAGIC):
        raise MidiError(path, "not-midi", "no MThd header")
    tracks = _check_chunks(path, data)
    fmt = int.from_bytes(data[8:10], "big")
    if fmt > 2:  # symusic refuses these, mido reads them: decided here so that both say the same
        raise MidiError(path, "corrupt", f"MThd declares format {fmt}; MIDI files are format 0, 1 or 2")
    if fmt == 2:
        raise MidiError(path, "type-2", "a format-2 file holds independent sequences, not one piece")
    tpq = int.from_bytes(data[12:14], "big")
    if tpq & 0x8000 or tpq == 0:
        raise MidiError(path, "corrupt", f"time division {tpq:#06x}: SMPTE time or 0 ticks per quarter "
                        "(only ticks per quarter are supported)")
    _check_timing(path, data, tracks, tpq, max_steps)
    return data, tracks


def _check_chunks(path: Path, data: bytes) -> list[tuple[int, int]]:
    """The chunk layout both readers accept: a 6-byte MThd, then as many complete MTrk chunks as it declares.
    Returns each declared track's body as (start, end) offsets.

    Without this the readers disagree: symusic silently reads a file cut at a chunk boundary (a header alone, or
    fewer tracks than declared) and skips unknown chunks, which mido rejects; mido accepts a longer MThd, which
    symusic rejects. Trailing bytes after the declared tracks are ignored by both.
    """
    if len(data) < 14:
        raise MidiError(path, "corrupt", f"the file ends inside the MThd chunk ({len(data)} bytes)")
    if int.from_bytes(data[4:8], "big") != 6:
        raise MidiError(path, "corrupt", "MThd chunk is not 6 bytes long")
    ntracks = int.from_bytes(data[10:12], "big")
    pos = 14
    tracks = []
    for i in range(ntracks):
        if pos + 8 > len(data):
            raise MidiError(path, "corrupt", f"header declares {ntracks} tracks, the file ends after {i}")
        if data[pos : pos + 4] != b"MTrk":
            found = data[pos : pos + 4]
            raise MidiError(path, "corrupt", f"header declares {ntracks} tracks, chunk {found!r} follows {i}")
        size = int.from_bytes(data[pos + 4 : pos + 8], "big")
        if pos + 8 + size > len(data):
            raise MidiError(path, "corrupt", f"track {i} declares {size} bytes, {len(data) - pos - 8} remain")
        tracks.append((pos + 8, pos + 8 + size))
        pos += 8 + size
    return tracks


# System common and real-time messages: status -> data bytes (MIDI 1.0); they carry a delta time like any event.
SYSTEM_DATA = {0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF6: 0, 0xF8: 0, 0xFA: 0, 0xFB: 0, 0xFC: 0, 0xFE: 0}
# Data bytes after a channel status (0x80-0xEF): program change and channel pressure 1, the others 2.
_CHANNEL_DATA = {s: 1 if 0xC0 <= s < 0xE0 else 2 for s in range(0x80, 0xF0)}


def varlen(data: bytes, pos: int) -> tuple[int, int]:
    """A MIDI variable-length quantity at data[pos]: 7 bits per byte, high bit set on all but the last -> (value, the
    position after it). IndexError when the data ends inside it."""
    b = data[pos]
    value = b & 0x7F
    while b & 0x80:
        pos += 1
        b = data[pos]
        value = (value << 7) | (b & 0x7F)
    return value, pos + 1


def track_ticks(data: bytes, pos: int, end: int) -> int:
    """The tick of a track's last event: the sum of its delta times, walking the events of data[pos:end].

    Lenient: it stops at the first malformed event (the parsers then decide whether the file is corrupt) and counts
    the ticks up to there. An event that begins before `end` is read to its own end, past `end` if need be. About
    0.12 us per event, a few times symusic's whole parse: `_check_timing` walks a track only where `tick_bounds`
    cannot settle its verdict.
    """
    ticks = running = 0
    run_data = 0  # data bytes of the running status's kind
    try:
        while pos < end:
            b = data[pos]  # the delta time, inline: nearly every delta is one byte
            pos += 1
            if b & 0x80:
                delta = b & 0x7F
                while b & 0x80:
                    b = data[pos]
                    pos += 1
                    delta = (delta << 7) | (b & 0x7F)
                ticks += delta
            else:
                ticks += b
            status = data[pos]
            if status < 0x80:  # running status: the data bytes of the last channel message's kind
                if not running:
                    break
                pos += run_data
            elif status < 0xF0:
                running, run_data = status, _CHANNEL_DATA[status]
                pos += 1 + run_data
            elif status == 0xFF or status == 0xF0 or status == 0xF7:  # meta (type, length, data) or sysex
                size, pos = varlen(data, pos + (2 if status == 0xFF else 1))
                pos += size
            elif status in SYSTEM_DATA:  # both parsers read on past these (song position, clock ...)
                pos += 1 + SYSTEM_DATA[status]
            else:  # undefined (0xF4, 0xF5, 0xF9, 0xFD): both parsers call the file corrupt
                break
    except IndexError:  # an event cut by the end of the data
        pass
    return ticks


def tick_bounds(data: bytes, tracks: list[tuple[int, int]]) -> np.ndarray:
    """For each track, an upper bound of `track_ticks(data, start, end)` without walking its events; -1 where there
    is none this cheap. Vectorised: about 25 us for a small file, 7 ns a byte (the walk: 0.12 us an event).

    Why it bounds: a delta time is a varlen, bytes >= 0x80 ended by one < 0x80, starting in [start, end). Read every
    byte as if it were part of a varlen ending at the first byte < 0x80 from it: byte q is worth its 7 bits shifted by
    7 per byte after it up to that end. For the bytes of a real delta this is exact, and its value is the sum of its
    bytes' worths; deltas never share a byte and no worth is negative, so the worths of all bytes in [start, end + 3)
    add up to at least the track's ticks (a delta of at most 4 bytes that starts before `end` ends before end + 3). A
    delta of 5 bytes or more starts with 4 bytes >= 0x80: where those occur in the track, there is no bound (-1;
    such runs are text or sysex data, nearly never deltas). Status and data bytes are counted too (0x90 0x3C is worth
    2108), so the bound is loose, tens of ticks a byte: enough to clear the limits for nearly all small files.
    """
    n = len(data)
    high = np.zeros(n + 6, np.uint8)  # 1 where a byte is >= 0x80; padded: a varlen running past the data ends no delta
    high[:n] = np.frombuffer(data, np.uint8) >> 7
    two = high[:-1] & high[1:]  # q and q + 1 both >= 0x80
    three = two[:-1] & high[2:]
    four = three[:-1] & high[3:]  # a varlen of 5 bytes or more starts at q
    after = high[: n + 4] + two[: n + 4] + three[: n + 4]  # bytes after q in its varlen, capped at 3
    low = np.zeros(n + 4, np.int32)
    low[:n] = np.frombuffer(data, np.uint8) & 0x7F
    worth = low << (7 * after)  # below 2**28
    # Per track, sums over [start, end + 3) and flags over [start, end): reduceat sums from each index to the next.
    ranges = np.array([(a, b + 3) for a, b in tracks], np.intp).ravel()
    sums = np.add.reduceat(worth, ranges, dtype=np.int64)[::2]
    longs = np.logical_or.reduceat(four, ranges - [0, 3] * len(tracks))[::2]  # at start == end: four[start], no harm
    return np.where(longs, -1, sums)


def _timing_ok(last: int, tpq: int, max_steps: int | None) -> bool:
    """Whether a file whose last event lies at tick `last` passes `_check_timing`. Monotone: a smaller tick passes
    whenever a larger one does, so a bound that passes proves the exact tick passes."""
    steps = _steps(last, tpq)
    return last <= MAX_TICK and steps <= MAX_STEP and (max_steps is None or steps <= max_steps)


def _steps(last: int, tpq: int) -> int:
    return int(np.floor(last / (tpq / STEPS_PER_BEAT) + 0.5))  # as quantize rounds


def _check_timing(path: Path, data: bytes, tracks: list[tuple[int, int]], tpq: int, max_steps: int | None) -> None:
    """Ticks and steps range-checked on the raw events, before either parser (or any cast) sees them.

    Only the tracks whose cheap bound does not pass are walked. Should one of them fail, it lies beyond every
    bounded track (their bounds pass, its ticks do not), so the largest walked tick is the file's last tick: the
    verdict and its message are those of walking every track."""
    bounds = tick_bounds(data, tracks) if tracks else ()
    walked = [track_ticks(data, a, b) for (a, b), bound in zip(tracks, bounds)
              if bound < 0 or not _timing_ok(int(bound), tpq, max_steps)]
    last = max(walked, default=0)
    if _timing_ok(last, tpq, max_steps):
        return
    if last > MAX_TICK:
        raise MidiError(path, "bad-timing", f"an event at tick {last}, beyond {MAX_TICK} (ticks are 32-bit)")
    steps = _steps(last, tpq)
    if steps > MAX_STEP:
        raise MidiError(path, "bad-timing", f"the file lasts {steps} steps (tick {last} at {tpq} per quarter), "
                        f"more than the {MAX_STEP} a piece can hold")
    raise MidiError(path, "too-long", f"the file lasts {steps} steps (its last event at tick {last}, {tpq} "
                    f"per quarter) > --max-steps {max_steps}")


def read_tick_notes(path: str | os.PathLike, parser: Parser = "symusic", *, max_bytes: int = MAX_FILE_BYTES,
                    max_steps: int | None = None, sustain: bool = False, sostenuto: bool = False):
    """All non-drum notes as tick-time arrays `(pitch, start, end, velocity)` and the ticks per quarter.

    `max_bytes` caps the file size; `max_steps` (None: the representation's MAX_STEP only) caps the file's length.
    `sustain` / `sostenuto` lengthen the notes their channel's pedal holds (deepj.music.pedal)."""
    path = Path(path)
    if parser not in ("symusic", "pretty_midi"):
        raise ValueError(f"unknown MIDI parser {parser!r}; use symusic or pretty_midi")
    data, tracks = _check_file(path, max_bytes, max_steps)
    pitch, start, end, vel, tpq, controls = _parse_notes(path, data, parser)
    if sustain or sostenuto:
        from deepj.music.pedal import apply_pedals

        end = apply_pedals(data, tracks, pitch, start, end, sustain=sustain, sostenuto=sostenuto, controls=controls)
    return pitch, start, end, vel, tpq


def _parse_notes(path: Path, data: bytes, parser: Parser):
    """The parser's non-drum notes, all tracks together, as read_tick_notes returns them, and the controller events
    (tick, number, value) of the one track holding notes, where there is exactly one (else None)."""
    if parser == "symusic":
        import symusic

        try:
            score = symusic.Score.from_midi(data)
        except Exception as e:  # noqa: BLE001 (any failure of the C++ parser on a file means a corrupt file)
            raise MidiError(path, "corrupt", str(e).splitlines()[0][:200]) from None
        tpq = int(score.ticks_per_quarter)
        played = [t for t in score.tracks if not t.is_drum and len(t.notes)]
        cols = [t.notes.numpy() for t in played]
        if not cols:
            return (np.zeros(0, np.int64),) * 4 + (tpq, None)
        pitch = np.concatenate([c["pitch"].astype(np.int64) for c in cols])
        start = np.concatenate([c["time"].astype(np.int64) for c in cols])
        end = start + np.concatenate([c["duration"].astype(np.int64) for c in cols])
        vel = np.concatenate([c["velocity"].astype(np.int64) for c in cols])
        controls = None
        if len(played) == 1:  # symusic groups notes by (track, channel): one group, one channel
            cc = played[0].controls.numpy()
            controls = np.stack([cc["time"], cc["number"], cc["value"]], axis=1).astype(np.int64)
        return pitch, start, end, vel, tpq, controls
    if parser == "pretty_midi":
        import io
        import warnings

        import pretty_midi

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pretty_midi warns about tempo events on non-zero tracks
                pm = pretty_midi.PrettyMIDI(io.BytesIO(data))
        except Exception as e:  # noqa: BLE001 (mido/pretty_midi raise many types for broken files)
            raise MidiError(path, "corrupt", str(e).splitlines()[0][:200] if str(e) else type(e).__name__) from None
        notes = [n for inst in pm.instruments if not inst.is_drum for n in inst.notes]
        tpq = int(pm.resolution)
        if not notes:
            return (np.zeros(0, np.int64),) * 4 + (tpq, None)
        pitch = np.array([n.pitch for n in notes], dtype=np.int64)
        start = np.array([pm.time_to_tick(n.start) for n in notes], dtype=np.int64)
        end = np.array([pm.time_to_tick(n.end) for n in notes], dtype=np.int64)
        vel = np.array([n.velocity for n in notes], dtype=np.int64)
        return pitch, start, end, vel, tpq, None  # pretty_midi, the reference: the events are walked
    raise ValueError(f"unknown MIDI parser {parser!r}; use symusic or pretty_midi")


def read_midi(path: str | os.PathLike, cfg: ReprConfig, parser: Parser = "symusic", *,
              max_bytes: int = MAX_FILE_BYTES, max_steps: int | None = None) -> np.ndarray:
    """A MIDI file -> canonical grid notes in the configured pitch range. Raises MidiError for unusable files."""
    pitch, start, end, vel, tpq = read_tick_notes(path, parser, max_bytes=max_bytes, max_steps=max_steps,
                                                  sustain=cfg.sustain, sostenuto=cfg.sostenuto)
    if tpq <= 0:
        raise MidiError(path, "corrupt", f"ticks per quarter {tpq} (SMPTE time is not supported)")
    if len(pitch) == 0:
        raise MidiError(path, "no-notes")
    # Checked on the raw events already; kept for what a parser might still make of them (never cast unchecked).
    if start.min() < 0 or (end < start).any() or end.max() > MAX_TICK:
        raise MidiError(path, "bad-timing", f"note ticks [{start.min()}, {end.max()}] out of range")
    return quantize(pitch, start, end, vel, tpq, cfg)


def notes_to_pretty_midi(notes: np.ndarray, bpm: float = 120.0, program: int = 0):
    """Grid notes -> a pretty_midi object at a fixed tempo (the paper wrote 120 bpm)."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=WRITE_RESOLUTION, initial_tempo=bpm)
    inst = pretty_midi.Instrument(program=program, name="piano")
    sec_per_step = 60.0 / bpm / STEPS_PER_BEAT
    for n in notes:
        inst.notes.append(
            pretty_midi.Note(
                velocity=int(min(max(int(n["velocity"]), 1), MAX_VELOCITY)),
                pitch=int(n["pitch"]),
                start=float(n["start"]) * sec_per_step,
                end=float(n["end"]) * sec_per_step,
            )
        )
    pm.instruments.append(inst)
    return pm


def write_midi(notes: np.ndarray, path: str | os.PathLike, bpm: float = 120.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    notes_to_pretty_midi(notes, bpm).write(str(path))
    return path
