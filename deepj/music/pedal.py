"""The sustain pedal (controller 64) and, as an option, the sostenuto pedal (66), applied to tick-time notes.

Performance MIDI (MAESTRO, GiantMIDI-Piano, ATEPP, Aria-MIDI) records what the pianist's hands and feet did: a key
released under the pedal goes on sounding, and the file's note-off says only when the finger left the key. Read
without the pedal, a performance becomes a staccato, half-empty texture that no pianist played
(docs/design.md#the-sustain-pedal). The rules, pinned by tests/test_pedal.py through both MIDI parsers:

- the sustain pedal is down while the controller's value is at or above 64 (half-pedal values count by that line);
- a note released while its channel's sustain pedal is down sounds on until the pedal lifts; a note struck again
  meanwhile ends there and the new one is a re-strike (`representation.merge` cuts a pitch's sounding run at each
  onset, so only the lengthening is done here);
- a pedal acts on the notes of its own MIDI channel, whichever track carries it: channels, not tracks, are what a
  MIDI instrument hears;
- at one tick, pedal events act before notes (as Magenta's note-seq orders them): a note released at the tick the
  pedal goes down is held, one released at the tick it lifts is not;
- a pedal never lifted holds its notes to the end of the piece (the last note-off of the file);
- sostenuto (option): the notes whose keys are down when the pedal goes down (struck before that tick, released at
  it or later) sound on until it lifts; the sustain pedal then acts on what sostenuto left.

Neither parser says which channel a note came from, and neither keeps a controller on a (track, channel) that has no
notes, so the events are read here from the raw track chunks. Notes are matched to channels by (onset tick, pitch);
a note struck at one tick on several channels is held by any of their pedals.
"""

from __future__ import annotations

import numpy as np

from deepj.music.midi_io import SYSTEM_DATA, varlen

SUSTAIN, SOSTENUTO = 64, 66
DOWN = 64  # a pedal value at or above this is down


class PedalEvents:
    """What the raw events say about pedals: controller events and the channels notes are struck on."""

    def __init__(self, cc: np.ndarray, note_channels: int, note_keys: np.ndarray | None):
        self.cc = cc  # (E, 4) int64: tick, channel, controller, value; in file order within each chunk
        self.note_channels = note_channels  # bit c set when a note-on of channel c occurs anywhere
        self.note_keys = note_keys  # (M,) tick << 11 | pitch << 4 | channel of every note-on; None: not collected


def scan(data: bytes, tracks: list[tuple[int, int]], controllers: tuple[int, ...], with_notes: bool) -> PedalEvents:
    """Walk every event of the track chunks data[a:b] for the given controllers' events (and, with `with_notes`, every
    note-on's tick, pitch and channel). Lenient like `midi_io.track_ticks`: the parsers have already accepted the
    file, and a chunk is read up to its first malformed event."""
    wanted = set(controllers)
    cc: list[tuple[int, int, int, int]] = []
    keys: list[int] = []
    channels = 0
    for pos, end in tracks:
        tick = running = 0
        try:
            while pos < end:
                b = data[pos]
                pos += 1
                delta = b & 0x7F
                while b & 0x80:
                    b = data[pos]
                    pos += 1
                    delta = (delta << 7) | (b & 0x7F)
                tick += delta
                status = data[pos]
                if status >= 0x80:
                    pos += 1
                    if status >= 0xF0:  # meta, sysex or system messages carry no channel
                        if status == 0xFF or status == 0xF0 or status == 0xF7:
                            size, pos = varlen(data, pos + (status == 0xFF))  # meta: a type byte, then the length
                            pos += size
                        elif status in SYSTEM_DATA:
                            pos += SYSTEM_DATA[status]
                        else:
                            break
                        continue
                    running = status
                elif not running:
                    break
                kind = running & 0xF0
                if kind == 0xC0 or kind == 0xD0:
                    pos += 1
                    continue
                a, v = data[pos], data[pos + 1]
                pos += 2
                if kind == 0x90 and v:
                    ch = running & 0x0F
                    channels |= 1 << ch
                    if with_notes:
                        keys.append(tick << 11 | a << 4 | ch)
                elif kind == 0xB0 and a in wanted:
                    cc.append((tick, running & 0x0F, a, v))
        except IndexError:  # an event cut by the end of the data
            pass
    arr = np.array(cc, np.int64).reshape(-1, 4)
    return PedalEvents(arr, channels, np.array(keys, np.int64) if with_notes else None)


def _down_intervals(ev: np.ndarray, piece_end: int) -> tuple[np.ndarray, np.ndarray]:
    """One channel's events of one controller (tick, value; file order) -> the ticks [down, up) it is down. The
    state after a tick is that of its last event; a pedal still down at the end lifts at `piece_end`."""
    order = np.argsort(ev[:, 0], kind="stable")  # chunks one after another: a stable sort keeps order within a tick
    ticks, down = ev[order, 0], ev[order, 1] >= DOWN
    last = np.ones(len(ticks), dtype=bool)
    last[:-1] = ticks[1:] != ticks[:-1]
    ticks, down = ticks[last], down[last]
    change = np.empty(len(down), dtype=bool)
    change[0] = down[0]
    change[1:] = down[1:] != down[:-1]
    ticks, down = ticks[change], down[change]  # alternating: down, up, down, ...
    starts = ticks[down]
    ups = ticks[~down]
    ups = np.concatenate([ups, np.full(len(starts) - len(ups), max(piece_end, int(ticks[-1])), np.int64)])
    return starts, ups


def _note_masks(events: PedalEvents, pitch: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The channels each note was struck on, as bit masks (0 where the raw events hold no such onset)."""
    if events.note_channels & (events.note_channels - 1) == 0:  # one channel (or none) strikes notes
        return np.full(len(pitch), events.note_channels, np.int64)
    keys = np.sort(events.note_keys)
    onset = keys >> 4
    first = np.ones(len(keys), dtype=bool)
    first[1:] = onset[1:] != onset[:-1]
    masks = np.bitwise_or.reduceat(np.left_shift(1, keys & 0xF), np.flatnonzero(first))
    uniq = onset[first]
    want = (start << 7) | pitch
    idx = np.minimum(np.searchsorted(uniq, want), len(uniq) - 1)
    return np.where(uniq[idx] == want, masks[idx], 0)


def controller_chunks(data: bytes, tracks: list[tuple[int, int]]) -> int:
    """How many track chunks hold a byte 0xBn, which every controller event needs (as its status, or before it as
    the running status); a chunk without one holds no controller event. A cheap filter (text and delta bytes can
    match too): a file with none skips everything else."""
    arr = np.frombuffer(data, np.uint8)
    return sum(bool(np.any((arr[a:b] & 0xF0) == 0xB0)) for a, b in tracks)


def apply_pedals(data: bytes, tracks: list[tuple[int, int]], pitch: np.ndarray, start: np.ndarray, end: np.ndarray,
                 sustain: bool = True, sostenuto: bool = False, controls: np.ndarray | None = None) -> np.ndarray:
    """Tick-time notes (aligned int64 arrays) -> their ends with the pedals applied.

    `controls`: the parser's controller events (tick, number, value) of the notes' one (track, channel) group, where
    the notes come from one group. They are the whole story when one chunk alone holds controller events and they
    include some (so that chunk is the notes'): a pedal elsewhere would need a 0xBn byte in another chunk, and one on
    another channel does not act on these notes. The walk is then not needed (0.27 us an event in Python: it made
    reading a MAESTRO file 6 times slower)."""
    controllers = (SUSTAIN,) * sustain + (SOSTENUTO,) * sostenuto
    chunks = controller_chunks(data, tracks) if len(pitch) and controllers else 0
    if chunks == 0:
        return end
    if controls is not None and len(controls) and chunks == 1:
        mine = controls[np.isin(controls[:, 1], controllers)]
        cc = np.stack([mine[:, 0], np.zeros(len(mine), np.int64), mine[:, 1], mine[:, 2]], axis=1)
        return _lengthen(cc, controllers, np.ones(len(pitch), np.int64), start, end)
    events = scan(data, tracks, controllers, with_notes=False)
    cc = events.cc
    if not (cc[:, 3] >= DOWN).any():
        return end
    if events.note_channels & (events.note_channels - 1):  # several channels: the notes' channels are needed
        events = scan(data, tracks, controllers, with_notes=True)
    return _lengthen(cc, controllers, _note_masks(events, pitch, start), start, end)


def _lengthen(cc: np.ndarray, controllers: tuple[int, ...], masks: np.ndarray, start: np.ndarray,
              end: np.ndarray) -> np.ndarray:
    """The notes' ends, held by the pedal events `cc` (tick, channel, controller, value) of their channels (`masks`)."""
    piece_end = int(end.max())
    end = end.copy()
    for controller in sorted(controllers, reverse=True):  # sostenuto first: sustain then holds what it left
        for ch in np.unique(cc[cc[:, 2] == controller, 1]):
            mine = cc[(cc[:, 2] == controller) & (cc[:, 1] == ch)][:, [0, 3]]
            if not (mine[:, 1] >= DOWN).any():
                continue
            downs, ups = _down_intervals(mine, piece_end)
            on = (masks >> int(ch)) & 1 == 1
            # The press holding each note: for sustain, the last press at or before its release, if not lifted by
            # then; for sostenuto, the last press at or before its release, if after its onset (its key was down).
            k = np.searchsorted(downs, end, side="right") - 1
            kk = np.maximum(k, 0)
            held = on & (k >= 0) & ((end < ups[kk]) if controller == SUSTAIN else (downs[kk] > start))
            end = np.where(held, np.maximum(end, ups[kk]), end)
    return end
