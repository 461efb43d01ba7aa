"""Windows cut on the fly from WebDataset shards: the catalogue of a split, an epoch's order, and the worker that
reads shards and cuts micro-batches. deepj/data/loader.py runs them and says what an epoch is; read it first.

Worker w of K of a rank makes this rank's micro-batches i with i % K == w; the DataLoader's in-order round robin
yields them as 0, 1, 2, ..., so batches are bit-identical for any K. A worker reads a block with WebDataset's tar
reader when one of its windows lies in it, keeps the block's compressed pieces, decodes a piece (and its replay flags)
the first time it cuts a window of it, and holds only the blocks of its current micro-batch plus one more (normally
the previous and the current block), so its memory follows the block size, not the corpus size; only the catalogue
(a few ints per piece and per shard) grows with the corpus. Cost: every worker of every rank reads, checksums and
mostly decodes every block, i.e. world_size * workers passes over the compact shards per epoch.

Errors: a shard that is missing, of another size than its manifest entry (truncated), unreadable by WebDataset, or
whose sha256 or piece count differs, raises `ShardError` naming the file (`on_error="raise"`), or with
`on_error="skip"` is reported once (a `ShardSkipped` warning and `loader.skipped_shards`) and its windows are replaced
deterministically by windows of the nearest block with readable shards, so every rank still gets the same batches.
Worker exceptions are re-raised in the main process by the DataLoader; nothing waits on a dead worker.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from deepj.data.manifest import Manifest, ShardEntry, ShardError, windows_per_piece
from deepj.data.shards import META_KEY, NOTES_KEY, decode_notes
from deepj.music.constants import STEPS_PER_BAR
from deepj.music.representation import ReprConfig, notes_to_roll, replay_flags

if TYPE_CHECKING:
    from deepj.data.loader import DataConfig

# splitmix64 constants: a fast, well-mixed integer hash, vectorised in numpy uint64 (wrap-around is intended).
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def _window_hash(seed: int, epoch: int, wids: np.ndarray, salt: int = 0) -> np.ndarray:
    """uint64 hash of (seed, epoch, window id, salt): a pure function of the window, independent of batching."""
    mask = (1 << 64) - 1
    key = _mix(np.array([seed & mask], dtype=np.uint64)) ^ np.uint64(epoch & mask)
    key = _mix(key) ^ np.uint64(salt & mask)
    return _mix(_mix(key) ^ np.asarray(wids, dtype=np.int64).astype(np.uint64))


class Catalogue:
    """A split's windows from the manifest alone: window id -> (piece, start step), piece -> shard and style."""

    def __init__(self, manifest: Manifest, split: str, seq_len: int, stride: int):
        self.dir, self.split, self.seq_len, self.stride = manifest.dir, split, seq_len, stride
        self.shards: list[ShardEntry] = manifest.split(split)  # ShardError naming the file when the split has none
        steps = manifest.piece_steps(split)  # (P,) int64, manifest order
        self.piece_style = manifest.piece_styles(split)  # (P,) int64
        group = [name.split("/")[0] for name in manifest.styles.styles]
        same = np.array([[g == h for h in group] for g in group], dtype=np.float32)  # (S, S)
        self.group_style = same / same.sum(1, keepdims=True)  # (S, S): row i = the mixture over leaf i's group
        windows = windows_per_piece(steps, seq_len, stride)
        self.piece_first = np.concatenate([[0], np.cumsum(windows)])  # (P + 1,) first window id of each piece
        self.shard_first_piece = np.concatenate([[0], np.cumsum([s.pieces for s in self.shards])])
        self.shard_first = self.piece_first[self.shard_first_piece]  # (S + 1,) first window id of each shard
        self.total = int(self.piece_first[-1])

    def locate(self, wids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Window ids -> (piece index, start step)."""
        piece = np.searchsorted(self.piece_first, wids, side="right") - 1
        return piece, (wids - self.piece_first[piece]) * self.stride

    def shard_of(self, wids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.shard_first, wids, side="right") - 1

    def shard_windows(self, shards) -> np.ndarray:
        """The window ids of the given shards, shard after shard."""
        ranges = [np.arange(self.shard_first[s], self.shard_first[s + 1]) for s in shards]
        return np.concatenate(ranges) if ranges else np.zeros(0, dtype=np.int64)


class Order:
    """Global position within an epoch -> window id; a function of (seed, epoch) only."""

    def __init__(self, cat: Catalogue, seed: int, epoch: int, shuffle: bool, shuffle_block: int):
        self.cat, self.seed, self.epoch, self.shuffle = cat, seed, epoch, shuffle
        n = len(cat.shards)
        perm = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        self.blocks = [perm[i : i + shuffle_block] for i in range(0, n, shuffle_block)]
        sizes = [int((cat.shard_first[b + 1] - cat.shard_first[b]).sum()) for b in self.blocks]
        self.block_first = np.concatenate([[0], np.cumsum(sizes)])  # (num_blocks + 1,) first position of each block
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def block_windows(self, b: int) -> np.ndarray:
        if b not in self._cache:
            wids = self.cat.shard_windows(self.blocks[b])
            if self.shuffle:
                wids = wids[np.random.default_rng([self.seed, self.epoch, b]).permutation(len(wids))]
            self._cache[b] = wids
            while len(self._cache) > 4:
                self._cache.popitem(last=False)
        return self._cache[b]

    def lookup(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions -> (window ids, block of each)."""
        blocks = np.searchsorted(self.block_first, positions, side="right") - 1
        wids = np.empty(len(positions), dtype=np.int64)
        for b in np.unique(blocks):
            m = blocks == b
            wids[m] = self.block_windows(int(b))[positions[m] - self.block_first[b]]
        return wids, blocks


@dataclass(frozen=True)
class TrainPlan:
    """This rank's micro-batches for the rest of an epoch, counted from `first_micro` of the step after `consumed`."""

    consumed: int
    global_batch: int
    accumulation: int
    micro_batch: int
    rank: int
    first_micro: int
    count: int

    def positions(self, i: int) -> np.ndarray:
        step, m = divmod(self.first_micro + i, self.accumulation)
        a, b = self.accumulation, self.micro_batch
        first = self.consumed + step * self.global_batch + self.rank * a * b + m * b
        return first + np.arange(b, dtype=np.int64)


@dataclass(frozen=True)
class ValPlan:
    """Fixed validation windows: Q = count * world * B positions spread evenly over the split (cycled if Q > total)."""

    count: int
    micro_batch: int
    rank: int
    world_size: int
    total: int

    def positions(self, i: int) -> np.ndarray:
        b = self.micro_batch
        q = (i * self.world_size + self.rank) * b + np.arange(b, dtype=np.int64)
        q_all = self.count * self.world_size * b
        return q * self.total // q_all if q_all <= self.total else q % self.total


class _Piece:
    """A decoded piece with what cutting its windows needs; arrays are contiguous for searchsorted."""

    __slots__ = ("notes", "replay", "starts", "max_end")

    def __init__(self, notes: np.ndarray):
        self.notes = notes
        self.replay = replay_flags(notes)
        self.starts = np.ascontiguousarray(notes["start"])
        # Running max of note ends: notes before the first index where it exceeds step t have all ended by t.
        self.max_end = np.maximum.accumulate(notes["end"]) if len(notes) else np.zeros(0, dtype=np.uint32)


class _HashingReader:
    """A file object that hashes what WebDataset's tar reader pulls through it."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        return data


class WindowSource:
    """One worker's view of an epoch: loads blocks on demand, decodes pieces lazily, cuts micro-batches."""

    def __init__(self, cat: Catalogue, order: Order, rcfg: ReprConfig, cfg: DataConfig, num_styles: int,
                 augment: bool):
        self.cat, self.order, self.rcfg, self.cfg = cat, order, rcfg, cfg
        self.num_styles, self.transpose = num_styles, cfg.transpose if augment else 0
        self.group_prob = cfg.group_style if augment else 0.0  # training windows only; validation keeps the leaf
        self.blocks: OrderedDict[int, dict[int, Any]] = OrderedDict()  # block -> {piece: bytes | _Piece}
        self.bad: dict[int, str] = {}  # shard index -> reason
        self.unreported: list[str] = []

    # -- reading --------------------------------------------------------------------------------------------
    def _read_shard(self, s: int) -> list[bytes] | None:
        """The shard's notes blobs in tar order, all checked against the manifest; None if bad in skip mode."""
        entry = self.cat.shards[s]
        path = self.cat.dir / entry.name
        try:
            return self._read_checked(path, entry)
        except ShardError as e:
            if self.cfg.on_error == "raise":
                raise
            self.bad[s] = str(e)
            self.unreported.append(entry.name + "\t" + str(e))
            return None

    def _read_checked(self, path: Path, entry: ShardEntry) -> list[bytes]:
        if not path.is_file():
            raise ShardError(f"{path}: shard file missing (listed in manifest.json)")
        size = path.stat().st_size
        if size != entry.bytes:
            what = "truncated" if size < entry.bytes else "of the wrong size"
            raise ShardError(f"{path}: shard {what}: {size} bytes, manifest.json says {entry.bytes}")
        blobs = []
        with open(path, "rb") as f:
            reader = _HashingReader(f)
            try:
                for k, sample in enumerate(group_by_keys(tar_file_expander([{"url": str(path), "stream": reader}]))):
                    if NOTES_KEY not in sample or META_KEY not in sample:
                        raise ShardError(f"{path}: sample {k} has members {sorted(sample)} instead of "
                                         f"{NOTES_KEY} and {META_KEY} (corrupt tar header?)")
                    meta = json.loads(sample[META_KEY])
                    if k >= entry.pieces:
                        raise ShardError(f"{path}: more samples than the {entry.pieces} of manifest.json")
                    if meta["steps"] != entry.piece_steps[k] or meta["style_id"] != entry.piece_styles[k]:
                        raise ShardError(f"{path}: sample {k} ({meta['steps']} steps, style {meta['style_id']}) "
                                         f"does not match manifest.json's entry")
                    blobs.append(sample[NOTES_KEY])
            except (tarfile.TarError, OSError, ValueError, KeyError, TypeError) as e:
                raise ShardError(f"{path}: unreadable by WebDataset: {type(e).__name__}: {e}") from e
            while reader.read(1 << 20):  # the tar reader stops at the end marker; hash the padding too
                pass
        if entry.sha256 and reader.sha.hexdigest() != entry.sha256:  # "" when the manifest lists none
            raise ShardError(f"{path}: sha256 {reader.sha.hexdigest()[:12]}... differs from manifest.json's "
                             f"{entry.sha256[:12]}... (corrupt shard)")
        if len(blobs) != entry.pieces:
            raise ShardError(f"{path}: holds {len(blobs)} pieces, manifest.json says {entry.pieces}")
        return blobs

    def _load(self, b: int) -> dict[int, Any]:
        if b in self.blocks:
            self.blocks.move_to_end(b)
            return self.blocks[b]
        pieces: dict[int, Any] = {}
        for s in self.order.blocks[b]:
            blobs = None if int(s) in self.bad else self._read_shard(int(s))
            if blobs is not None:
                first = int(self.cat.shard_first_piece[s])
                pieces.update((first + k, blob) for k, blob in enumerate(blobs))
        self.blocks[b] = pieces
        return pieces

    def _pin(self, needed: set[int]) -> None:
        """Load the blocks the current micro-batch needs; drop the least recent others beyond one spare."""
        for b in sorted(needed):
            self._load(b)
        for b in [b for b in self.blocks if b not in needed][: max(0, len(self.blocks) - len(needed) - 1)]:
            del self.blocks[b]

    def _piece(self, piece: int, block: int) -> _Piece:
        pieces = self.blocks[block]
        item = pieces[piece]
        if isinstance(item, bytes):
            s = int(np.searchsorted(self.cat.shard_first_piece, piece, side="right")) - 1
            where = f"{self.cat.dir / self.cat.shards[s].name}: piece {piece - self.cat.shard_first_piece[s]}"
            try:  # after a matching sha256 this means a writer bug, so it raises in skip mode too
                notes = decode_notes(item)
            except ShardError as e:
                raise ShardError(f"{where}: {e}") from None
            lo, hi = self.rcfg.min_pitch, self.rcfg.max_pitch
            if len(notes) and (notes["pitch"].min() < lo or notes["pitch"].max() >= hi):
                raise ShardError(f"{where}: pitches outside the manifest's range [{lo}, {hi})")
            item = pieces[piece] = _Piece(notes)
        return item

    # -- skip mode ------------------------------------------------------------------------------------------
    def _fill(self, wids: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Replace windows of bad shards by windows of the nearest block (b, b+1, b-1, ...) with readable shards."""
        bad = np.isin(self.cat.shard_of(wids), list(self.bad))
        if not bad.any():
            return wids, blocks
        wids, blocks = wids.copy(), blocks.copy()
        n = len(self.order.blocks)
        for b in np.unique(blocks[bad]):
            for src in sorted(range(n), key=lambda c: (abs(c - b), c < b)):
                self._load(src)
                good = self.cat.shard_windows([s for s in self.order.blocks[src] if int(s) not in self.bad])
                if len(good):
                    break
            else:
                raise ShardError(f"no readable shard in split {self.cat.split!r} of {self.cat.dir}: "
                                 + "; ".join(self.bad.values()))
            m = bad & (blocks == b)
            pick = _window_hash(self.order.seed, self.order.epoch, wids[m], salt=1) % np.uint64(len(good))
            wids[m], blocks[m] = good[pick.astype(np.int64)], src
        return wids, blocks

    # -- cutting --------------------------------------------------------------------------------------------
    def batch(self, positions: np.ndarray) -> dict[str, Any]:
        wids, blocks = self.order.lookup(positions)
        self._pin({int(b) for b in blocks})
        if self.bad:
            wids, blocks = self._fill(wids, blocks)
            self._pin({int(b) for b in blocks})
        piece, start = self.cat.locate(wids)
        hashes = _window_hash(self.order.seed, self.order.epoch, wids)
        n_win, length = len(wids), self.cfg.seq_len
        notes = torch.empty((n_win, length + 1, self.rcfg.num_notes, 3))  # (B, L+1, N, 3): steps [s-1, s+L)
        buf = notes.numpy()
        shifts = np.zeros(n_win, dtype=np.int64)
        for j in range(n_win):
            shifts[j] = self._cut(self._piece(int(piece[j]), int(blocks[j])), int(start[j]), hashes[j], buf[j])
        beat = (start[:, None] + np.arange(length)[None, :]) % STEPS_PER_BAR  # (B, L): beat of target step t
        style = torch.zeros((n_win, self.num_styles))
        style[torch.arange(n_win), torch.from_numpy(self.cat.piece_style[piece])] = 1.0
        if self.group_prob > 0:
            # A pure function of the window (like its transposition), so a resumed run draws the same.
            u = (_window_hash(self.order.seed, self.order.epoch, wids, salt=2) >> np.uint64(11)) / float(2**53)
            grouped = u < self.group_prob  # (B,)
            style[grouped] = torch.from_numpy(self.cat.group_style[self.cat.piece_style[piece[grouped]]])
        out = {"notes": notes, "beat": torch.from_numpy(beat), "style": style,
               "window": torch.from_numpy(np.stack([piece, start, shifts], axis=1))}
        if self.unreported:
            out["bad_shards"], self.unreported = tuple(self.unreported), []
        return out

    def _cut(self, p: _Piece, s: int, h: np.uint64, out: np.ndarray) -> int:
        """Write steps [s-1, s+L) of a piece, transposed, into out (L+1, N, 3); return the transposition."""
        length, rcfg = self.cfg.seq_len, self.rcfg
        after = max(s - 1, 0)  # notes ending at or before this step are not in the window
        lo = int(np.searchsorted(p.max_end, after, side="right"))
        hi = int(np.searchsorted(p.starts, s + length, side="left"))
        shift = 0
        if self.transpose and hi > lo:
            sel = p.notes[lo:hi]
            pitch = sel["pitch"][sel["end"] > after]
            if len(pitch):
                low = max(-self.transpose, rcfg.min_pitch - int(pitch.min()))
                high = min(self.transpose, rcfg.max_pitch - 1 - int(pitch.max()))
                shift = low + int(h % np.uint64(high - low + 1))
        elif self.transpose:
            shift = int(h % np.uint64(2 * self.transpose + 1)) - self.transpose
        if s == 0:  # row 0 is step -1: silence before the piece
            out[0] = 0.0
            notes_to_roll(p.notes[lo:hi], rcfg, 0, length, shift, p.replay[lo:hi], out=out[1:])
        else:
            notes_to_roll(p.notes[lo:hi], rcfg, s - 1, length + 1, shift, p.replay[lo:hi], out=out)
        return shift


class MicroBatches(IterableDataset):
    """Worker w of K yields micro-batches i = w, w + K, ... of a plan (the DataLoader interleaves them in order)."""

    def __init__(self, cat, order, rcfg, cfg, num_styles, augment, plan):
        self.args, self.plan = (cat, order, rcfg, cfg, num_styles, augment), plan

    def __iter__(self):
        info = get_worker_info()
        w, k = (info.id, info.num_workers) if info is not None else (0, 1)
        source = WindowSource(*self.args)
        for i in range(w, self.plan.count, k):
            yield source.batch(self.plan.positions(i))
