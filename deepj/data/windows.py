"""Windows cut on the fly from WebDataset shards: the catalogue of a split, an epoch's order, and the worker that
reads pieces and cuts micro-batches. deepj/data/loader.py runs them and says what an epoch is; read it first.

Why this shape. A corpus at the scale deepj is for (10^5..10^6 pieces, 100+ GB as dense rolls) must stream with
memory bounded by a setting, and each process must read what it uses, not the corpus. Three choices make that so:
- Random access by piece. The manifest's piece index (deepj/data/manifest.py) gives each piece's byte range in its
  shard and its crc32, so a worker reads one piece with one `pread` and verifies it by itself: no shard is read
  whole, no block must be read before the first batch, and bytes read are those of the pieces whose windows the
  process cuts. The shards stay plain tars (WebDataset reads them as before); the index is the only addition. Chosen
  over WebDataset's `wids` (a per-shard index of samples, made by reading every shard once per process, and whose
  cache holds whole shards) and over mapping whole shards (their page-cache pages would count in every process's
  RSS as it reads them).
- A bounded cache of decoded pieces: one buffer of `data.cache_mb` filled as a ring, the oldest piece out first
  (`_Slab`), the only thing that grows while streaming, and only up to its size. Each process holds its own; the
  memory a process holds is the cache, the catalogue (10 bytes a piece), one epoch's piece permutation (4 bytes a
  piece) and the batches in flight, whatever the shard, block or piece sizes.
- A two-level shuffle that a bounded cache can serve. The split's pieces are permuted (`default_rng([seed, epoch])`)
  and cut, in that order, into pools of about `data.shuffle_mb` of decoded notes (a fixed number of pieces per pool,
  from the split's mean piece size). The epoch is pool after pool, each pool a permutation (`default_rng([seed,
  epoch, pool])`) of all the windows of its pieces. A pool draws its pieces from the whole corpus, so a global batch
  holds about as many distinct pieces and styles as a uniform draw would (measured in docs/benchmarks.md); a process
  decodes each piece of a pool it cuts windows from once, while the pool is current, as long as the cache holds a
  pool (loader.py refuses a cache smaller than the pool).

Worker w of K of a rank makes this rank's micro-batches i with i % K == w; the DataLoader's in-order round robin
yields them as 0, 1, 2, ..., so batches are bit-identical for any K.

Errors: each piece is verified when read (its shard present and of the manifest's size, its bytes' crc32 as the
index gives it); a failure raises `ShardError` naming the shard and the piece (`on_error="raise"`), or with
`on_error="skip"` the shard is reported once (a `ShardSkipped` warning and `loader.skipped_shards`) and each window
of a bad piece is replaced by the next window of the epoch's order whose piece is good: a function of the data only,
so the same on every rank and in every resume. A piece whose bytes verify but do not decode, or hold pitches outside
the manifest's range, is a writer bug and raises in both modes. Worker exceptions are re-raised in the main process
by the DataLoader; nothing waits on a dead worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from deepj.data.manifest import Manifest, ShardError, windows_per_piece
from deepj.data.shards import decode_notes
from deepj.music.constants import STEPS_PER_BAR
from deepj.music.representation import NOTE_DTYPE, ReprConfig, notes_to_roll, replay_flags

if TYPE_CHECKING:
    from deepj.data.loader import DataConfig

# splitmix64 constants: a fast, well-mixed integer hash, vectorised in numpy uint64 (wrap-around is intended).
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
# Decoded bytes a note costs in the cache (the note, its replay flag, the contiguous starts and the running max end)
# and a piece beyond its notes (the Python objects around its arrays, outside the cache's buffer): what the pools
# count.
NOTE_COST = NOTE_DTYPE.itemsize + 1 + 4 + 4
PIECE_COST = 1024
_OPEN_SHARDS = 64  # file descriptors a worker keeps open
_TRIM_EVERY = 256 * 2**20  # bytes of batches between two malloc_trim calls: ~1 ms each, a fraction of a percent


def _libc():
    """glibc, for malloc_trim; None elsewhere (musl, macOS)."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return lib if hasattr(lib, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def _window_hash(seed: int, epoch: int, keys: np.ndarray, salt: int = 0) -> np.ndarray:
    """uint64 hash of (seed, epoch, window key, salt): a pure function of the window, independent of batching."""
    mask = (1 << 64) - 1
    key = _mix(np.array([seed & mask], dtype=np.uint64)) ^ np.uint64(epoch & mask)
    key = _mix(key) ^ np.uint64(salt & mask)
    return _mix(_mix(key) ^ np.asarray(keys, dtype=np.int64).astype(np.uint64))


class Catalogue:
    """A split's pieces from the manifest alone: steps, notes and style of each (views of the manifest's columns),
    and where each lies (its shard). Windows are counted from the steps: a piece of T steps gives
    `max(1, (T - seq_len) // stride + 1)` windows starting every `stride` steps."""

    def __init__(self, manifest: Manifest, split: str, seq_len: int, stride: int):
        self.dir, self.split, self.seq_len, self.stride = manifest.dir, split, seq_len, stride
        self.shards = manifest.split(split)  # ShardError naming the file when the split has none
        self.all_shards = manifest.shards
        self.lo, hi = manifest.split_range(split)  # the split's pieces are pieces [lo, hi) of the manifest
        self.count = hi - self.lo
        self.table = manifest.pieces
        self.steps = manifest.pieces.steps[self.lo:hi]  # (P,) uint32 views, no copies
        self.notes = manifest.pieces.notes[self.lo:hi]
        self.piece_style = manifest.pieces.styles[self.lo:hi]
        self.shard_first_piece = manifest.shard_first_piece()  # (all shards + 1,) global piece index
        group = [name.split("/")[0] for name in manifest.styles.styles]
        same = np.array([[g == h for h in group] for g in group], dtype=np.float32)  # (S, S)
        self.group_style = same / same.sum(1, keepdims=True)  # (S, S): row i = the mixture over leaf i's group
        chunk = 1 << 20
        self.total = sum(int(self.windows(np.arange(i, min(i + chunk, self.count))).sum())
                         for i in range(0, self.count, chunk))
        decoded = float(self.notes.sum(dtype=np.int64)) * NOTE_COST + self.count * PIECE_COST
        self.mean_cost = decoded / max(1, self.count)  # decoded bytes of a mean piece

    def windows(self, pieces: np.ndarray) -> np.ndarray:
        """(n,) int64 windows of the given pieces (split-local indices)."""
        return windows_per_piece(self.steps[pieces], self.seq_len, self.stride)

    def shard_of(self, piece: int) -> tuple[int, int]:
        """A split-local piece -> (its shard's index in the manifest, its index in that shard)."""
        g = self.lo + piece
        s = int(np.searchsorted(self.shard_first_piece, g, side="right")) - 1
        return s, g - int(self.shard_first_piece[s])

    def window_ids(self, piece: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Windows numbered piece after piece in split order (for tests and debugging: O(pieces) memory)."""
        first = np.concatenate([[0], np.cumsum(self.windows(np.arange(self.count)))])
        return first[piece] + start // self.stride


@dataclass(frozen=True)
class _Pool:
    pieces: np.ndarray  # (n,) int64 split-local pieces, in the epoch's piece order
    first: np.ndarray  # (n + 1,) int64 first window of each within the pool
    perm: np.ndarray | None  # (W,) the pool's window order (None: in order)


class Order:
    """Global position within an epoch -> window (piece, start); a function of (seed, epoch, pool size) only."""

    def __init__(self, cat: Catalogue, seed: int, epoch: int, shuffle: bool, pool_bytes: int):
        self.cat, self.seed, self.epoch, self.shuffle = cat, seed, epoch, shuffle
        n = cat.count
        self.perm = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)  # (P,) 4 bytes a piece
        if shuffle:
            np.random.default_rng([seed, epoch]).shuffle(self.perm)
        self.per_pool = max(1, int(pool_bytes // cat.mean_cost))
        pools = -(-n // self.per_pool)
        counts = np.zeros(pools, dtype=np.int64)
        step = max(1, (1 << 20) // self.per_pool)  # pools at a time: O(1 M) windows counted at once
        for p0 in range(0, pools, step):
            lo, hi = p0 * self.per_pool, min(n, (p0 + step) * self.per_pool)
            w = cat.windows(self.perm[lo:hi])
            counts[p0 : p0 + len(range(lo, hi, self.per_pool))] = np.add.reduceat(w, np.arange(0, hi - lo,
                                                                                                self.per_pool))
        self.pool_first = np.concatenate([[0], np.cumsum(counts)])  # (pools + 1,) first position of each pool
        self._cache: OrderedDict[int, _Pool] = OrderedDict()

    def pool(self, b: int) -> _Pool:
        if b not in self._cache:
            lo, hi = b * self.per_pool, min(self.cat.count, (b + 1) * self.per_pool)
            pieces = self.perm[lo:hi].astype(np.int64)
            first = np.concatenate([[0], np.cumsum(self.cat.windows(pieces))])
            perm = None
            if self.shuffle:  # held as int32 (a pool has far fewer than 2^31 windows): half the memory
                perm = np.random.default_rng([self.seed, self.epoch, b]).permutation(int(first[-1]))
                perm = perm.astype(np.int32) if len(perm) < 2**31 else perm
            self._cache[b] = _Pool(pieces, first, perm)
            while len(self._cache) > 2:  # the current pool and the next (a batch may straddle them)
                self._cache.popitem(last=False)
        return self._cache[b]

    def lookup(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions -> (split-local piece, start step) of each window."""
        positions = np.asarray(positions, dtype=np.int64)
        pools = np.searchsorted(self.pool_first, positions, side="right") - 1
        piece, start = np.empty(len(positions), np.int64), np.empty(len(positions), np.int64)
        for b in np.unique(pools):
            m = pools == b
            pool = self.pool(int(b))
            k = positions[m] - self.pool_first[b]
            if pool.perm is not None:
                k = pool.perm[k]
            j = np.searchsorted(pool.first, k, side="right") - 1
            piece[m], start[m] = pool.pieces[j], (k - pool.first[j]) * self.cat.stride
        return piece, start


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

    def __init__(self, notes: np.ndarray, replay: np.ndarray, starts: np.ndarray, max_end: np.ndarray):
        self.notes, self.replay, self.starts = notes, replay, starts
        # Running max of note ends: notes before the first index where it exceeds step t have all ended by t.
        self.max_end = max_end


class _Slab:
    """The memory of the decoded-piece cache: one buffer of `data.cache_mb`, filled as a ring, the oldest piece out
    first (with pools read in order, the oldest is the least recently needed).

    Why not a dict of numpy arrays: long-lived piece arrays in the malloc heap, between the batch buffers that come and
    go, fragment it, and the process grew to 5x its cache over 500k windows (docs/benchmarks.md). In one buffer the
    cache costs exactly its size, and the heap holds only short-lived things."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.buf = np.empty(capacity, dtype=np.uint8)  # pages are touched (and counted) as the ring first fills
        self.head = 0
        self.ring: deque[tuple[int, int, int]] = deque()  # (offset, size, piece), oldest first

    def alloc(self, size: int, evict) -> int:
        """Room for `size` bytes (size <= capacity): evicts (calls `evict(piece)` for) the oldest pieces in the way."""
        if self.head + size > self.capacity:
            while self.ring and self.ring[0][0] >= self.head:  # the last round's tail, beyond this round's head
                evict(self.ring.popleft()[2])
            self.head = 0
        end = self.head + size
        while self.ring and self.ring[0][0] >= self.head and self.ring[0][0] < end:
            evict(self.ring.popleft()[2])
        return self.head

    def place(self, piece: int, notes: np.ndarray, evict) -> _Piece:
        """Copy a decoded piece into the ring -> its views there. The views stay valid until the piece is evicted,
        which only a later `place` can do."""
        k = len(notes)
        size = -(-(NOTE_COST * k) // 8) * 8  # starts (4k) | max_end (4k) | notes (10k) | replay (k); 8-aligned
        o = self.alloc(size, evict)
        self.ring.append((o, size, piece))
        self.head = o + size
        buf = self.buf
        starts = buf[o : o + 4 * k].view(np.uint32)
        max_end = buf[o + 4 * k : o + 8 * k].view(np.uint32)
        rows = buf[o + 8 * k : o + 18 * k].view(NOTE_DTYPE)
        replay = buf[o + 18 * k : o + 19 * k].view(np.bool_)
        rows[:] = notes
        starts[:] = notes["start"]
        np.maximum.accumulate(notes["end"], out=max_end)
        replay[:] = replay_flags(notes)
        return _Piece(rows, replay, starts, max_end)


def _standalone(notes: np.ndarray) -> _Piece:
    """A decoded piece outside the cache (one larger than the whole cache, or with no notes)."""
    max_end = np.maximum.accumulate(notes["end"]) if len(notes) else np.zeros(0, dtype=np.uint32)
    return _Piece(notes, replay_flags(notes), np.ascontiguousarray(notes["start"]), max_end)


class _WriterBug(ShardError):
    """Bytes that verify but do not make a valid piece: raised in skip mode too."""


class WindowSource:
    """One worker's view of an epoch: reads and verifies pieces on demand, keeps the decoded ones in a bounded
    cache, cuts micro-batches."""

    def __init__(self, cat: Catalogue, order: Order, rcfg: ReprConfig, cfg: DataConfig, num_styles: int,
                 augment: bool):
        self.cat, self.order, self.rcfg, self.cfg = cat, order, rcfg, cfg
        self.num_styles, self.transpose = num_styles, cfg.transpose if augment else 0
        self.group_prob = cfg.group_style if augment else 0.0  # training windows only; validation keeps the leaf
        self.slab: _Slab | None = None  # made at the first piece: a worker that reads nothing allocates nothing
        self.cache: dict[int, _Piece] = {}  # split-local piece -> decoded, views into the slab
        self.fds: OrderedDict[int, int] = OrderedDict()  # manifest shard index -> open file
        self.bad_pieces: dict[int, str] = {}
        self.bad_shards: dict[int, str] = {}  # manifest shard index -> reason (file missing or of the wrong size)
        self.unreported: list[str] = []
        self.read_bytes = 0  # piece bytes read from shards (the index records are 26 bytes a piece more)
        self.in_worker = get_worker_info() is not None
        self._since_trim = 0  # bytes of batches allocated since the heap was last trimmed

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    # -- reading --------------------------------------------------------------------------------------------
    def _fd(self, s: int) -> int:
        if s in self.fds:
            self.fds.move_to_end(s)
            return self.fds[s]
        if s in self.bad_shards:
            raise ShardError(self.bad_shards[s])
        entry = self.cat.all_shards[s]
        path = self.cat.dir / entry.name
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ShardError(f"{path}: shard file missing (listed in manifest.json)") from None
        except OSError as e:
            raise ShardError(f"{path}: cannot be opened: {e.strerror}") from None
        size = os.fstat(fd).st_size
        if size != entry.bytes:
            os.close(fd)
            what = "truncated" if size < entry.bytes else "of the wrong size"
            raise ShardError(f"{path}: shard {what}: {size} bytes, manifest.json says {entry.bytes}")
        self.fds[s] = fd
        while len(self.fds) > _OPEN_SHARDS:
            os.close(self.fds.popitem(last=False)[1])
        return fd

    def _read(self, piece: int) -> np.ndarray:
        """Read, verify and decode one piece (split-local index) -> its notes."""
        s, k = self.cat.shard_of(piece)
        rec = self.cat.table.records(np.array([self.cat.lo + piece]))[0]
        path = self.cat.dir / self.cat.all_shards[s].name
        try:
            fd = self._fd(s)
        except ShardError as e:
            self.bad_shards.setdefault(s, str(e))
            raise
        offset, length = int(rec["offset"]), int(rec["length"])
        data = os.pread(fd, length, offset)
        self.read_bytes += len(data)
        where = f"{path}: piece {k} (bytes {offset}..{offset + length})"
        if len(data) != length or zlib.crc32(data) != int(rec["crc32"]):
            raise ShardError(f"{where}: crc32 differs from the piece index's (corrupt shard)")
        try:
            notes = decode_notes(data)
        except ShardError as e:
            raise _WriterBug(f"{where}: {e}") from None
        lo, hi = self.rcfg.min_pitch, self.rcfg.max_pitch
        if len(notes) and (notes["pitch"].min() < lo or notes["pitch"].max() >= hi):
            raise _WriterBug(f"{where}: pitches outside the manifest's range [{lo}, {hi})")
        steps = int(notes["end"].max()) if len(notes) else 0
        if steps != int(rec["steps"]) or len(notes) != int(rec["notes"]):
            raise _WriterBug(f"{where}: {len(notes)} notes over {steps} steps, the piece index says "
                             f"{int(rec['notes'])} over {int(rec['steps'])}")
        return notes

    def _piece(self, piece: int) -> _Piece | None:
        """The decoded piece, from the cache or read; None for a bad piece in skip mode."""
        p = self.cache.get(piece)
        if p is not None:
            return p
        if piece in self.bad_pieces:
            return None
        try:
            notes = self._read(piece)
        except _WriterBug:
            raise
        except ShardError as e:
            if self.cfg.on_error == "raise":
                raise
            self.bad_pieces[piece] = str(e)
            name = self.cat.all_shards[self.cat.shard_of(piece)[0]].name
            self.unreported.append(name + "\t" + str(e))
            return None
        if not 0 < NOTE_COST * len(notes) <= self.cfg.cache_bytes:
            return _standalone(notes)  # used for this window, read again when needed
        if self.slab is None:
            self.slab = _Slab(self.cfg.cache_bytes)
        p = self.cache[piece] = self.slab.place(piece, notes, self.cache.pop)
        return p

    def _replacement(self, position: int) -> tuple[int, int, _Piece]:
        """Skip mode: the first window after `position` in the epoch's order (cyclically) whose piece is good."""
        total = self.cat.total
        for q in range(position + 1, position + total):
            piece, start = self.order.lookup(np.array([q % total]))
            p = self._piece(int(piece[0]))
            if p is not None:
                return int(piece[0]), int(start[0]), p
        raise ShardError(f"no readable piece in split {self.cat.split!r} of {self.cat.dir}: "
                         + "; ".join(sorted(set(self.bad_pieces.values()))[:3]))

    def _trim(self, nbytes: int) -> None:
        """Give the heap's free pages back to the OS after every _TRIM_EVERY bytes of batches. Batches of a few MB
        come and go between long-lived allocations; glibc keeps the holes they leave resident, and a process grew by
        ~90 MB over its cache without this (docs/benchmarks.md). A no-op where the C library has no malloc_trim."""
        self._since_trim += nbytes
        if self._since_trim >= _TRIM_EVERY and _LIBC is not None:
            self._since_trim = 0
            _LIBC.malloc_trim(0)

    # -- cutting --------------------------------------------------------------------------------------------
    def batch(self, positions: np.ndarray) -> dict[str, Any]:
        piece, start = self.order.lookup(positions)
        n_win, length = len(positions), self.cfg.seq_len
        shape = (n_win, length + 1, self.rcfg.num_notes, 3)  # (B, L+1, N, 3): steps [s-1, s+L)
        if self.in_worker:
            # Filled in shared memory, the batch goes to the trainer as it is; otherwise the DataLoader would copy it
            # there, after a heap buffer that comes and goes with every batch.
            notes = torch.empty(shape).share_memory_()
        else:
            # numpy's plain malloc, not torch's 64-byte-aligned one: glibc reuses the freed buffer of a batch for the
            # next of the same size, where an aligned request, slightly larger, never fits the hole and the heap grows
            # by a batch each time until trimmed.
            notes = torch.from_numpy(np.empty(shape, dtype=np.float32))
        self._trim(notes.nbytes)
        buf = notes.numpy()
        shifts = np.zeros(n_win, dtype=np.int64)
        read0 = self.read_bytes
        key = piece * 2**32 + start  # (B,) a window's identity for its random draws: (piece, start) < (2^31, 2^24)
        hashes = _window_hash(self.order.seed, self.order.epoch, key)
        for j in range(n_win):
            # Each window is cut right after its piece is found: placing the next piece may evict this one.
            p = self._piece(int(piece[j]))
            if p is None:
                piece[j], start[j], p = self._replacement(int(positions[j]))
                key[j] = piece[j] * 2**32 + start[j]
                hashes[j] = _window_hash(self.order.seed, self.order.epoch, key[j : j + 1])[0]
            shifts[j] = self._cut(p, int(start[j]), hashes[j], buf[j])
        beat = (start[:, None] + np.arange(length)[None, :]) % STEPS_PER_BAR  # (B, L): beat of target step t
        style = torch.zeros((n_win, self.num_styles))
        styles = self.cat.piece_style[piece].astype(np.int64)
        style[torch.arange(n_win), torch.from_numpy(styles)] = 1.0
        if self.group_prob > 0:
            # A pure function of the window (like its transposition), so a resumed run draws the same.
            u = (_window_hash(self.order.seed, self.order.epoch, key, salt=2) >> np.uint64(11)) / float(2**53)
            grouped = u < self.group_prob  # (B,)
            style[grouped] = torch.from_numpy(self.cat.group_style[styles[grouped]])
        out = {"notes": notes, "beat": torch.from_numpy(beat), "style": style,
               "window": torch.from_numpy(np.stack([piece, start, shifts], axis=1)),
               "read_bytes": self.read_bytes - read0}
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
        try:
            for i in range(w, self.plan.count, k):
                yield source.batch(self.plan.positions(i))
        finally:
            source.close()
