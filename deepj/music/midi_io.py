"""MIDI files at the edges of the representation: read into grid notes, write grid notes back.

pretty_midi is the reference reader and the writer. symusic (a C++ parser) is the fast reader used by preprocessing;
tests/test_midi_io.py checks that both yield the same grid notes on every test file, corrupt ones included.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from deepj.music.constants import MAX_VELOCITY, STEPS_PER_BEAT
from deepj.music.representation import ReprConfig, quantize

Parser = Literal["symusic", "pretty_midi"]
MIDI_MAGIC = b"MThd"
WRITE_RESOLUTION = 480  # ticks per quarter in the files we write; divisible by 4 so the grid maps exactly


class MidiError(Exception):
    """A MIDI file that cannot be used. `reason` is a short machine-readable word for reports."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def _check_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MidiError(path, "unreadable", e.strerror or str(e)) from None
    if len(data) == 0:
        raise MidiError(path, "empty")
    if not data.startswith(MIDI_MAGIC):
        raise MidiError(path, "not-midi", "no MThd header")
    _check_chunks(path, data)
    return data


def _check_chunks(path: Path, data: bytes) -> None:
    """The chunk layout both readers accept: a 6-byte MThd, then as many complete MTrk chunks as it declares.

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
    for i in range(ntracks):
        if pos + 8 > len(data):
            raise MidiError(path, "corrupt", f"header declares {ntracks} tracks, the file ends after {i}")
        if data[pos : pos + 4] != b"MTrk":
            found = data[pos : pos + 4]
            raise MidiError(path, "corrupt", f"header declares {ntracks} tracks, chunk {found!r} follows {i}")
        size = int.from_bytes(data[pos + 4 : pos + 8], "big")
        if pos + 8 + size > len(data):
            raise MidiError(path, "corrupt", f"track {i} declares {size} bytes, {len(data) - pos - 8} remain")
        pos += 8 + size


def read_tick_notes(path: str | os.PathLike, parser: Parser = "symusic"):
    """All non-drum notes as tick-time arrays `(pitch, start, end, velocity)` and the ticks per quarter."""
    path = Path(path)
    data = _check_file(path)
    if parser == "symusic":
        import symusic

        try:
            score = symusic.Score.from_midi(data)
        except Exception as e:  # noqa: BLE001 (any failure of the C++ parser on a file means a corrupt file)
            raise MidiError(path, "corrupt", str(e).splitlines()[0][:200]) from None
        tpq = int(score.ticks_per_quarter)
        cols = [t.notes.numpy() for t in score.tracks if not t.is_drum]
        cols = [c for c in cols if len(c["time"])]
        if not cols:
            return (np.zeros(0, np.int64),) * 4 + (tpq,)
        pitch = np.concatenate([c["pitch"].astype(np.int64) for c in cols])
        start = np.concatenate([c["time"].astype(np.int64) for c in cols])
        end = start + np.concatenate([c["duration"].astype(np.int64) for c in cols])
        vel = np.concatenate([c["velocity"].astype(np.int64) for c in cols])
        return pitch, start, end, vel, tpq
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
            return (np.zeros(0, np.int64),) * 4 + (tpq,)
        pitch = np.array([n.pitch for n in notes], dtype=np.int64)
        start = np.array([pm.time_to_tick(n.start) for n in notes], dtype=np.int64)
        end = np.array([pm.time_to_tick(n.end) for n in notes], dtype=np.int64)
        vel = np.array([n.velocity for n in notes], dtype=np.int64)
        return pitch, start, end, vel, tpq
    raise ValueError(f"unknown MIDI parser {parser!r}; use symusic or pretty_midi")


def read_midi(path: str | os.PathLike, cfg: ReprConfig, parser: Parser = "symusic") -> np.ndarray:
    """A MIDI file -> canonical grid notes in the configured pitch range. Raises MidiError for unusable files."""
    pitch, start, end, vel, tpq = read_tick_notes(path, parser)
    if tpq <= 0:
        raise MidiError(path, "corrupt", f"ticks per quarter {tpq} (SMPTE time is not supported)")
    if len(pitch) == 0:
        raise MidiError(path, "no-notes")
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
