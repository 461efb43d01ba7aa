"""BL2012 data: the four benchmark files read as they are, the baseline, training crops and batches, and the check
that no validation or test music is in the training pieces.

A file holds keys traindata / validdata / testdata, each a 1xK object array of (frames, 88) 0/1 piano rolls, column 0
= MIDI 21 (A0). The frames are the file's own (quarter notes for JSB, eighth notes for the others): nothing here
re-renders or re-quantises them, and every one of the 88 columns is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import torch

from deepj.music.constants import NUM_CHANNELS, PIANO_MAX_PITCH, PIANO_MIN_PITCH, PLAY

NUM_KEYS = PIANO_MAX_PITCH - PIANO_MIN_PITCH  # 88: column 0 = MIDI 21 (A0), column 87 = MIDI 108 (C8)
SPLIT_KEYS = {"train": "traindata", "valid": "validdata", "test": "testdata"}
DATASETS = {"jsb": "JSB_Chorales.mat", "piano-midi": "Piano_midi.mat", "musedata": "MuseData.mat",
            "nottingham": "Nottingham.mat"}
BASELINE_SMOOTHING = 0.5  # add-1/2 (Krichevsky-Trofimov): keeps keys never played in training finite
LEAK_WINDOW = 16  # frames in a window compared between splits (2 bars of eighth notes, 4 bars of JSB's quarters)


class BL2012Error(Exception):
    """A BL2012 data file that cannot be used; the message names the file and what is wrong."""


def read_bl2012(path: str | Path) -> dict[str, list[np.ndarray]]:
    """{"train", "valid", "test"} -> list of (frames, 88) uint8 0/1 rolls, in file order."""
    path = Path(path)
    if not path.is_file():
        raise BL2012Error(f"{path}: no such file (expected a BL2012 .mat file, one of {', '.join(DATASETS.values())})")
    try:
        mat = scipy.io.loadmat(str(path))
    except (scipy.io.matlab.MatReadError, ValueError, OSError) as e:
        raise BL2012Error(f"{path}: not a readable MATLAB .mat file ({type(e).__name__}: {e})") from None
    missing = [k for k in SPLIT_KEYS.values() if k not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise BL2012Error(f"{path}: missing key(s) {', '.join(missing)}; a BL2012 file holds traindata, validdata "
                          f"and testdata (this one has: {', '.join(found) or 'nothing'})")
    out: dict[str, list[np.ndarray]] = {}
    for split, key in SPLIT_KEYS.items():
        arr = mat[key]
        if arr.dtype != object or arr.ndim != 2 or arr.shape[0] != 1:
            raise BL2012Error(f"{path}: {key} is a {arr.dtype} array of shape {arr.shape}, expected a 1xK cell array "
                              "of (frames, 88) piano rolls")
        pieces = []
        for i, roll in enumerate(arr[0]):
            roll = np.asarray(roll)
            if roll.ndim != 2 or roll.shape[1] != NUM_KEYS or roll.shape[0] == 0:
                raise BL2012Error(f"{path}: {key} piece {i} has shape {roll.shape}, expected (frames >= 1, 88)")
            pieces.append((roll > 0).astype(np.uint8))
        if not pieces:
            raise BL2012Error(f"{path}: {key} holds no pieces")
        out[split] = pieces
    return out


def bernoulli_baseline(train: list[np.ndarray], test: list[np.ndarray], smoothing: float = BASELINE_SMOOTHING) -> float:
    """NLL (nats per frame, summed over keys) on `test` of independent per-key Bernoullis fitted on `train`."""
    frames = np.concatenate(train).astype(np.float64)  # (F, 88)
    p = (frames.sum(0) + smoothing) / (len(frames) + 2 * smoothing)  # (88,)
    x = np.concatenate(test).astype(np.float64)  # (F', 88)
    return float(-(x @ np.log(p) + (1 - x) @ np.log1p(-p)).mean())


def make_batch(pieces: list[np.ndarray], crops: list[tuple[int, int, int, int]], beat_period: int) -> dict:
    """Crops (piece, start, length, transposition) -> tensors padded to the longest crop.

    Returns prev/target (B, L, 88, 3) [play, 0, 0] of frames t-1 / t, beat (B, L) int64, style (B, 1) ones, and
    mask (B, L) float32: 1 on real frames. Frame -1 of a piece (prev of its first frame) is all zeros.
    """
    length = max(c[2] for c in crops)
    notes = np.zeros((len(crops), length + 1, NUM_KEYS), dtype=np.float32)  # (B, L+1, 88): frames s-1 .. s+L-1
    mask = np.zeros((len(crops), length), dtype=np.float32)
    beat = np.zeros((len(crops), length), dtype=np.int64)
    for j, (i, s, n, k) in enumerate(crops):
        seg = pieces[i][max(s - 1, 0): s + n]  # (n or n+1, 88)
        dst = notes[j, 1 if s == 0 else 0:][: len(seg)]
        if k >= 0:
            dst[:, k:] = seg[:, : NUM_KEYS - k]
        else:
            dst[:, :k] = seg[:, -k:]
        mask[j, :n] = 1.0
        beat[j] = (s + np.arange(length)) % beat_period
    full = torch.zeros((len(crops), length + 1, NUM_KEYS, NUM_CHANNELS))  # (B, L+1, 88, 3): replay, volume stay 0
    full[..., PLAY] = torch.from_numpy(notes)
    return {"prev": full[:, :-1], "target": full[:, 1:], "beat": torch.from_numpy(beat),
            "style": torch.ones(len(crops), 1), "mask": torch.from_numpy(mask)}


def epoch_crops(pieces: list[np.ndarray], seq_len: int, transpose: int, batch: int,
                rng: np.random.Generator) -> list[list[tuple[int, int, int, int]]]:
    """One epoch's batches of crops (piece, start, length, shift), bucketed by length, in random order."""
    crops = []
    for i, roll in enumerate(pieces):
        n = len(roll) if seq_len == 0 else min(seq_len, len(roll))
        for _ in range(max(1, round(len(roll) / n))):
            s = int(rng.integers(0, len(roll) - n + 1))
            k = 0
            if transpose:
                keys = np.flatnonzero(roll[max(s - 1, 0): s + n].any(0))  # keys sounding in the crop
                lo = -transpose if len(keys) == 0 else max(-transpose, -int(keys[0]))
                hi = transpose if len(keys) == 0 else min(transpose, NUM_KEYS - 1 - int(keys[-1]))
                k = int(rng.integers(lo, hi + 1))
            crops.append((i, s, n, k))
    rng.shuffle(crops)
    # Sort within chunks of 32 batches by length, cut into batches, shuffle the batches: little padding, random order.
    chunk = 32 * batch
    batches = []
    for c in range(0, len(crops), chunk):
        part = sorted(crops[c: c + chunk], key=lambda x: x[2])
        batches += [part[b: b + batch] for b in range(0, len(part), batch)]
    rng.shuffle(batches)
    return batches


def window_keys(roll: np.ndarray, window: int = LEAK_WINDOW) -> list[int]:
    """Hashes of the piece's non-silent `window`-frame windows, each cut to the keys between its lowest and highest
    sounding key: a window and any transposition of it hash alike."""
    keys = []
    sounding = roll.any(1)  # (F,)
    for s in range(max(0, len(roll) - window + 1)):
        w = roll[s: s + window]  # (window, 88)
        if not sounding[s: s + window].any():
            continue
        cols = np.flatnonzero(w.any(0))
        keys.append(hash((int(cols[-1] - cols[0]), w[:, cols[0]: cols[-1] + 1].tobytes())))
    return keys


def window_set(pieces: list[np.ndarray], window: int = LEAK_WINDOW) -> set[int]:
    """Every window hash of `pieces` (the training split): built once, looked up for each other split."""
    return {k for roll in pieces for k in window_keys(roll, window)}


def shared_windows(seen: set[int], other: list[np.ndarray], window: int = LEAK_WINDOW) -> dict:
    """How much of `other` (a validation or test split) occurs among `seen` (`window_set` of the training pieces), at
    any transposition.

    Counts the non-silent `window`-frame windows of `other` that also occur in some training piece, and lists the
    pieces of `other` with more than half of their windows in training (a copy, or a transposed copy, of a training
    piece would show here). A window is compared at every transposition by cutting it to its sounding key range.
    """
    total = shared = 0
    mostly = []
    for i, roll in enumerate(other):
        keys = window_keys(roll, window)
        hits = sum(k in seen for k in keys)
        total, shared = total + len(keys), shared + hits
        if keys and hits > len(keys) / 2:
            mostly.append(i)
    return {"window": window, "windows": total, "shared": shared, "fraction": round(shared / max(total, 1), 6),
            "pieces_mostly_shared": mostly}
