"""Training windows streamed from WebDataset shards: deterministic in (seed, epoch), resumable, elastic.

The corpus is never held. From the manifest alone the loader knows every window of a split: piece i with T_i steps
gives `max(1, (T_i - seq_len) // stride + 1)` windows starting every `stride` steps (a piece shorter than `seq_len`
gives one window padded with silence); window ids number them piece after piece in manifest order.

An epoch's global order is a function of (seed, epoch) only, never of rank, world size or workers: the split's pieces
are permuted with `default_rng([seed, epoch])` and cut into pools of about `shuffle_mb` of decoded notes, and the order
is pool after pool, each pool a permutation (`default_rng([seed, epoch, pool])`) of all its windows. Optimizer step b
takes global positions `consumed0 + [b*G, (b+1)*G)`; rank r's micro-batch m of it takes `... + r*A*B + m*B + [0, B)` (G
= global batch, A = accumulation, B = micro-batch). The tail of fewer than G windows is dropped; it is the tail of a
permutation that changes every epoch, so no window is systematically skipped. Every rank therefore gets exactly `steps *
A` micro-batches whatever the shard sizes, and a state saved at one world size (or micro-batch) continues at another
from `consumed`, with no window repeated or dropped.

The window machinery (the catalogue, the order, reading pieces and cutting windows) lives in deepj/data/windows.py,
whose docstring says why it reads pieces by their byte ranges and how its memory is bounded by `cache_mb`; this module
is the loader a training run holds: its config, its batches and its state.
"""

from __future__ import annotations

import math
import signal
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from deepj.config import ConfigError
from deepj.data.manifest import Manifest, ShardError
from deepj.data.windows import Catalogue, MicroBatches, Order, TrainPlan, ValPlan
from deepj.music.representation import ReprConfig

STATE_VERSION = 2  # 1: blocks of whole shards shuffled together (deepj before the piece index)


@dataclass
class DataConfig:
    dir: str = "shards/demo"  # shard folder with manifest.json
    seq_len: int = 128  # steps per training window (8 bars)
    stride: int = 16  # windows start every `stride` steps within a piece (the paper's code: 16)
    transpose: int = 6  # max random transposition in semitones either way, kept within the pitch range; 0 = off
    # Decoded notes (MB) of the pool of pieces whose windows are shuffled together; the larger, the closer a batch
    # is to a uniform draw. The order depends on it (as on the seed).
    shuffle_mb: float = 128.0
    cache_mb: float = 256.0  # decoded pieces each loader process keeps (its memory bound); at least shuffle_mb
    workers: int = 1  # DataLoader worker processes per rank (0 = in the main process)
    on_error: Literal["raise", "skip"] = "raise"  # a bad shard: raise ShardError, or report it and fill its windows
    # Probability that a training window is conditioned on its style group - the mixture of all leaves sharing its
    # first-level name (its period, for period/composer folders) - instead of its own leaf's one-hot. `--style
    # baroque` asks for that mixture; without this the model never sees it in training (the paper's setting, 0).
    group_style: float = 0.0

    @property
    def pool_bytes(self) -> int:
        return int(self.shuffle_mb * 2**20)

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_mb * 2**20)

    def __post_init__(self) -> None:
        for key in ("seq_len", "stride"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must be at least 1, got {getattr(self, key)}")
        for key in ("shuffle_mb", "cache_mb"):
            if not 0 < getattr(self, key) < math.inf:
                raise ConfigError(f"data.{key} must be a positive number of MB, got {getattr(self, key)}")
        for key in ("transpose", "workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"data.{key} must be at least 0, got {getattr(self, key)}")
        if self.cache_mb < self.shuffle_mb:
            raise ConfigError(f"data.cache_mb={self.cache_mb} is smaller than data.shuffle_mb={self.shuffle_mb}: a "
                              "process would read the pieces of a pool again and again; raise data.cache_mb or lower "
                              "data.shuffle_mb")
        if not 0.0 <= self.group_style <= 1.0:
            raise ConfigError(f"data.group_style must lie in [0, 1], got {self.group_style}")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"data.on_error: {self.on_error!r} is not one of 'raise', 'skip'")


class ShardSkipped(UserWarning):
    """A bad shard skipped under on_error="skip"; its windows were replaced by others."""


def accumulation_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Micro-batches per rank per optimizer step: global batch = micro x accumulation x world, nothing else.

    The one check of the batch arithmetic (the loader, deepj.train and `deepj.launch plan` all use it); ConfigError
    names the keys to change."""
    if micro_batch < 1 or world_size < 1:
        raise ConfigError(f"train.micro_batch={micro_batch} and the world size ({world_size}) must be at least 1")
    per_step = micro_batch * world_size
    if global_batch < 1 or global_batch % per_step:
        positive = "positive " if global_batch < 1 else ""
        raise ConfigError(f"train.global_batch={global_batch} is not a {positive}multiple of train.micro_batch "
                          f"({micro_batch}) x world size ({world_size}) = {per_step}; "
                          "global batch = micro x accumulation x world")
    return global_batch // per_step


def shard_file_problems(manifest: Manifest, split: str) -> list[str]:
    """A sentence per shard of `split` whose file is missing or not the size manifest.json gives; cheap (a stat per
    shard, no checksum), for a check at start. [] when all are there (or the split has no shards)."""
    problems = []
    for s in manifest.shards:
        if s.split != split:
            continue
        path = manifest.dir / s.name
        if not path.is_file():
            problems.append(f"{path}: shard file missing (listed in manifest.json)")
        elif path.stat().st_size != s.bytes:
            what = "truncated" if path.stat().st_size < s.bytes else "of the wrong size"
            problems.append(f"{path}: shard {what}: {path.stat().st_size} bytes, manifest.json says {s.bytes}")
    return problems


def _worker_signals(_worker_id: int) -> None:
    """DataLoader workers leave stop signals to the trainer: Ctrl-C reaches the terminal's whole process group and
    Slurm signals every process of a step, and a worker killed by them would fail the trainer's next batch before it
    could save. Workers still end when the trainer stops them, and by themselves when it dies (DataLoader's
    watchdog)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def _original_message(e: ShardError) -> str:
    """The ShardError's own sentence: DataLoader re-raises a worker's exception with the worker's traceback as its
    message ("Caught ShardError in DataLoader worker process 0. Original Traceback ... ShardError: <message>")."""
    text = str(e)
    if "Original Traceback" in text and "ShardError: " in text:
        return text.rsplit("ShardError: ", 1)[1].strip()
    return text


def _stream(ds: MicroBatches, workers: int, skipped: dict[str, str], pin_memory: bool = False,
            counter: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Run a plan in-process or with DataLoader workers; add the prev/target views; report each bad shard once;
    add the shard bytes each batch read to counter[0]."""
    workers = min(workers, ds.plan.count)
    it = iter(ds) if workers == 0 else iter(DataLoader(ds, batch_size=None, num_workers=workers,
                                                       pin_memory=pin_memory and torch.cuda.is_available(),
                                                       worker_init_fn=_worker_signals))
    try:
        for batch in _clean_errors(it):
            read = int(batch.pop("read_bytes"))
            if counter is not None:
                counter[0] += read
            for item in batch.pop("bad_shards", ()):
                name, reason = item.split("\t", 1)
                if name not in skipped:
                    skipped[name] = reason
                    warnings.warn(f"skipping shard {reason}; its windows are replaced by others", ShardSkipped,
                                  stacklevel=2)
            batch["prev"], batch["target"] = batch["notes"][:, :-1], batch["notes"][:, 1:]  # (B, L, N, 3) views
            yield batch
    finally:
        # Stop the workers now, also when the caller stops early or a worker raised: the exception's traceback keeps
        # the DataLoader iterator alive, and workers left to the garbage collector linger and cost seconds later.
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _open(cfg: DataConfig, split: str, manifest: Manifest | None = None) -> tuple[Manifest, Catalogue]:
    """The manifest (read from data.dir unless given) and the split's catalogue of windows."""
    manifest = manifest if manifest is not None else Manifest.load(cfg.dir)
    return manifest, Catalogue(manifest, split, cfg.seq_len, cfg.stride)


def _clean_errors(it: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    try:
        yield from it
    except ShardError as e:
        raise ShardError(_original_message(e)) from None


class StreamingLoader:
    """This rank's micro-batches of a split, epoch after epoch. Iterate once per epoch; save/restore with state_dict.

    Batch: `notes` (B, L+1, N, 3) float32 = steps [s-1, s+L) of each window (row 0 zeros when s == 0), `prev` =
    notes[:, :-1] and `target` = notes[:, 1:] (views), `beat` (B, L) int64 = (s + t) % 16 of target step t, `style`
    (B, S) float32 one-hot (with `data.group_style` and augment, some rows are their style group's mixture),
    `window` (B, 3) int64 = (piece index in the split, start step, transposition).

    `manifest`: the shard folder's, when the caller has read it already (default: read from `cfg.dir`).
    """

    def __init__(self, cfg: DataConfig, split: str = "train", *, micro_batch: int, global_batch: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True, augment: bool = True,
                 pin_memory: bool = False, manifest: Manifest | None = None):
        if micro_batch < 1 or world_size < 1 or not 0 <= rank < world_size or seed < 0:
            raise ValueError(f"need micro_batch >= 1, 0 <= rank < world_size, seed >= 0; got micro_batch={micro_batch},"
                             f" rank={rank}, world_size={world_size}, seed={seed}")
        self.cfg, self.split, self.seed, self.shuffle, self.augment = cfg, split, seed, shuffle, augment
        self.pin_memory = pin_memory  # workers' batches land in page-locked memory: faster, asynchronous GPU copies
        self.rank, self.world_size, self.micro_batch = rank, world_size, micro_batch
        self.manifest, self._cat = _open(cfg, split, manifest)
        self.repr_cfg: ReprConfig = self.manifest.representation
        self.num_styles = self.manifest.styles.num_styles
        self.corpus = self.manifest.hash
        accumulation = accumulation_steps(global_batch, micro_batch, world_size)  # ConfigError, a ValueError
        if global_batch > self._cat.total:
            raise ValueError(f"split {split!r} of {cfg.dir} has {self._cat.total} windows (seq_len {cfg.seq_len}, "
                             f"stride {cfg.stride}), fewer than one global batch {global_batch}; lower the batch or "
                             "the stride")
        self.global_batch, self.accumulation = global_batch, accumulation
        # Fail at start, not hours in, on a shard that is plainly missing or of the wrong size (each piece's crc32 is
        # checked when it is read). In skip mode such shards are skipped when read, unless none is left to read.
        problems = shard_file_problems(self.manifest, split)
        if problems and (cfg.on_error == "raise" or len(problems) == len(self._cat.shards)):
            raise ShardError("; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
                             + ("" if cfg.on_error == "raise" else f": no readable shard left in split {split!r}"))
        self.epoch, self._consumed, self._micro, self._generation = 0, 0, 0, 0
        self.skipped_shards: dict[str, str] = {}
        self._read = [0]  # shard bytes read by this loader's processes (see bytes_read)

    @property
    def total_windows(self) -> int:
        return self._cat.total

    @property
    def bytes_read(self) -> int:
        """Piece bytes read from shards for the batches yielded so far (all workers; what workers prefetched beyond
        them is not counted yet)."""
        return self._read[0]

    def steps_per_epoch(self) -> int:
        """Optimizer steps left in the current epoch (the one in progress counts)."""
        return (self._cat.total - self._consumed) // self.global_batch

    def __len__(self) -> int:
        """Micro-batches this rank has left in the current epoch."""
        return self.steps_per_epoch() * self.accumulation - self._micro

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's global window order as window ids (windows numbered piece after piece in split order;
        O(total windows) memory, for tests and debugging)."""
        piece, start = Order(self._cat, self.seed, epoch, self.shuffle, self.cfg.pool_bytes).lookup(
            np.arange(self._cat.total))
        return self._cat.window_ids(piece, start)


    def __iter__(self) -> Iterator[dict[str, Any]]:
        # A generator: nothing below runs before the first next(), so an iterator made before load_state_dict
        # still starts from the restored position.
        self._generation += 1
        generation, epoch, remaining = self._generation, self.epoch, len(self)
        plan = TrainPlan(self._consumed, self.global_batch, self.accumulation, self.micro_batch, self.rank,
                          self._micro, remaining)
        order = Order(self._cat, self.seed, epoch, self.shuffle, self.cfg.pool_bytes)
        ds = MicroBatches(self._cat, order, self.repr_cfg, self.cfg, self.num_styles, self.augment, plan)
        done = 0
        for batch in _stream(ds, self.cfg.workers, self.skipped_shards, self.pin_memory, self._read):
            if generation != self._generation:
                raise RuntimeError("this loader iterator was superseded by a newer iter() or load_state_dict()")
            done += 1
            # Count what the trainer receives (not what workers prefetched), before it sees the batch.
            self._micro += 1
            if self._micro == self.accumulation:
                self._micro, self._consumed = 0, self._consumed + self.global_batch
            if done == remaining:  # the epoch's last batch: the state now points at the next epoch
                self.epoch, self._consumed = epoch + 1, 0
            yield batch
        if remaining == 0:
            self.epoch, self._consumed = epoch + 1, 0
        elif done != remaining:
            raise RuntimeError(f"loader produced {done} of {remaining} micro-batches of epoch {epoch}")

    def state_dict(self) -> dict[str, Any]:
        # seq_len and stride: two windowings can have the same number of windows, and then total_windows alone would
        # not show that a saved position means other windows now. States saved before they were added lack them.
        return {"version": STATE_VERSION, "split": self.split, "epoch": self.epoch, "consumed": self._consumed,
                "micro": self._micro, "seed": self.seed, "global_batch": self.global_batch,
                "total_windows": self._cat.total, "seq_len": self.cfg.seq_len, "stride": self.cfg.stride,
                "shuffle": int(self.shuffle), "shuffle_mb": self.cfg.shuffle_mb, "corpus": self.corpus}

    def position_changes(self, state: dict[str, Any]) -> list[str]:
        """What makes a saved position mean other windows under this loader's settings, as "key: old -> new"
        sentences naming the config key ([] when the position carries over). The epoch's order is a function of
        (seed, windowing, shuffle_mb), and `consumed` counts positions in that order."""
        if state.get("version") != STATE_VERSION:
            return [f"the loader's order: version {state.get('version')!r} -> {STATE_VERSION} (this deepj shuffles "
                    "pieces in pools of data.shuffle_mb)"]
        names = {"seed": "seed", "seq_len": "data.seq_len", "stride": "data.stride", "shuffle_mb": "data.shuffle_mb"}
        mine = self.state_dict()
        out = [f"{name}: {state[key]!r} -> {mine[key]!r}" for key, name in names.items()
               if key in state and state[key] != mine[key]]
        if not out and state.get("total_windows") != mine["total_windows"]:
            out.append(f"windows in split {self.split!r}: {state.get('total_windows')} -> {mine['total_windows']} "
                       "(data.seq_len or data.stride)")
        return out

    def restart_at_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (a resume whose saved position does not carry over)."""
        self.epoch, self._consumed, self._micro = int(epoch), 0, 0
        self._generation += 1

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}, this deepj reads {STATE_VERSION}")
        if state["micro"] != 0:
            raise ValueError(f"loader state was saved in the middle of an optimizer step (micro-batch "
                             f"{state['micro']}); save only after a step completes")
        mine = self.state_dict()
        for key in ("split", "seed", "total_windows", "seq_len", "stride", "shuffle", "shuffle_mb", "corpus"):
            if key in state and state[key] != mine[key]:
                raise ValueError(f"loader state {key}={state[key]!r} does not match this loader's {mine[key]!r}: "
                                 "the data, seed or windowing changed since the checkpoint")
        if not 0 <= state["consumed"] <= self._cat.total:
            raise ValueError(f"loader state consumed={state['consumed']} outside [0, {self._cat.total}]")
        # A different global batch continues from `consumed`: the rest of the epoch's order is cut into new steps.
        self.epoch, self._consumed, self._micro = int(state["epoch"]), int(state["consumed"]), 0
        self._generation += 1


def validation_batches(cfg: DataConfig, *, micro_batch: int, rank: int, world_size: int, num_batches: int,
                       split: str = "val", manifest: Manifest | None = None) -> Iterator[dict[str, Any]]:
    """Exactly `num_batches` micro-batches on every rank: fixed windows spread evenly over the split (cycled when
    it has fewer than num_batches * world_size * micro_batch), in manifest order, no augmentation. `manifest`: as
    for StreamingLoader (default: read from `cfg.dir`)."""
    if micro_batch < 1 or num_batches < 0 or not 0 <= rank < world_size:
        raise ValueError(f"need micro_batch >= 1, num_batches >= 0, 0 <= rank < world_size; got {micro_batch}, "
                         f"{num_batches}, {rank}, {world_size}")
    manifest, cat = _open(cfg, split, manifest)
    if cat.total == 0 and num_batches:
        raise ShardError(f"split {split!r} of {manifest.path} has no pieces, so no validation windows")
    plan = ValPlan(num_batches, micro_batch, rank, world_size, cat.total)
    ds = MicroBatches(cat, Order(cat, 0, 0, False, cfg.pool_bytes), manifest.representation, cfg,
                       manifest.styles.num_styles, False, plan)
    return _stream(ds, cfg.workers, {})
