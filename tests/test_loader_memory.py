"""The loader at scale: memory bounded by data.cache_mb whatever the corpus, reading proportional to what a process
uses, the cache's ring, and workers started by spawn (docs/design.md, "Streaming a corpus of any size"). The
corpus and helpers are test_data.py's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from shardgen import dense_piece, random_piece, replicate, write_corpus
from test_data import assert_same, cfg_for, deadline, make_corpus

from deepj.data.loader import DataConfig, StreamingLoader
from deepj.data.manifest import Manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


# -- memory bounded by data.cache_mb, reading proportional to use ---------------------------------------------------
@pytest.mark.slow
def test_worker_memory_is_bounded_by_the_cache_not_the_corpus(tmp_path):
    """A worker with a 16 MB cache streams a corpus whose decoded notes are ~25 and ~250 times that: its peak (USS)
    does not grow with the corpus, and each piece is read about once an epoch."""
    rng = np.random.default_rng(3)
    base = tmp_path / "x1"
    write_corpus(base, {"train": [(0, dense_piece(rng, 2000)) for _ in range(20)]}, shard_bytes=300_000)
    big = tmp_path / "x10"
    manifest10 = replicate(base, big, 10)
    peaks, decoded = [], []
    for d in (base, big):
        manifest = Manifest.load(d)
        decoded.append(sum(s.notes for s in manifest.shards) * 19)  # bytes if every piece were held decoded
        ld = StreamingLoader(DataConfig(dir=str(d), seq_len=16, stride=512, shuffle_mb=4, cache_mb=16, workers=1),
                             micro_batch=4, global_batch=4)
        peak = 0
        with deadline(240):
            for _ in ld:
                for child in psutil.Process().children():
                    peak = max(peak, child.memory_full_info().uss)
        peaks.append(peak)
        piece_bytes = int(manifest.pieces.all_records()["length"].sum())
        # Pools of 4 MB in a 16 MB cache: no piece is read twice in the epoch; windows of every piece are cut.
        assert ld.bytes_read == piece_bytes, (ld.bytes_read, piece_bytes)
    assert len(manifest10.shards) >= 30
    print("worker peak USS MB (1x, 10x):", [p / 1e6 for p in peaks], "decoded MB:", [x / 1e6 for x in decoded])
    assert decoded[1] > 200 * 2**20 and decoded[0] > 16 * 2**20  # both far beyond the cache
    assert peaks[1] - peaks[0] < 16e6, [p / 1e6 for p in peaks]


def test_a_small_cache_changes_the_reading_not_the_batches(corpus):
    """The cache's ring evicts pieces while a batch is cut (30 kB: a few pieces) or holds none (2 kB: most pieces are
    larger, decoded for each window): the batches are those of a cache that holds the whole split; only the bytes
    read grow. (A cache below the pool is refused by DataConfig; it is set after construction to force evictions
    within a pool.)"""
    d, _, _ = corpus
    runs = {}
    for cache in (64, 0.03, 0.002):
        cfg = cfg_for(d, shuffle_mb=0.2)
        cfg.cache_mb = cache
        ld = StreamingLoader(cfg, micro_batch=8, global_batch=8, seed=4)
        runs[cache] = (list(ld), ld.bytes_read)
    assert_same(runs[0.03][0], runs[64][0])
    assert_same(runs[0.002][0], runs[64][0])
    assert runs[64][1] < runs[0.03][1] < runs[0.002][1]


def test_first_batch_reads_only_the_pieces_of_its_windows(tmp_path):
    """One shard of 200 pieces (one pool, one block in the old loader): the first micro-batch reads at most its own 4
    pieces, not the shard; an epoch reads each piece once, two ranks together at most twice."""
    rng = np.random.default_rng(4)
    manifest = write_corpus(tmp_path, {"train": [(i % 3, random_piece(rng, 400)) for i in range(200)]},
                            shard_bytes=1 << 30)
    assert len(manifest.shards) == 1
    lengths = manifest.pieces.all_records()["length"]
    ld = StreamingLoader(cfg_for(tmp_path, shuffle_mb=64), micro_batch=4, global_batch=8, world_size=2)
    first = next(iter(ld))
    assert 0 < ld.bytes_read <= np.sort(lengths)[-4:].sum()
    assert ld.bytes_read == lengths[np.unique(first["window"][:, 0].numpy())].sum()
    ranks = [StreamingLoader(cfg_for(tmp_path, shuffle_mb=64), micro_batch=4, global_batch=8, rank=r, world_size=2)
             for r in range(2)]
    for r in ranks:
        for _ in r:
            pass
    assert all(r.bytes_read <= lengths.sum() for r in ranks)
    assert sum(r.bytes_read for r in ranks) > lengths.sum()  # most pieces have windows on both ranks


SPAWNED = """
import multiprocessing as mp, sys
import torch
from deepj.data.loader import DataConfig, StreamingLoader
if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    loaders = [StreamingLoader(DataConfig(dir=sys.argv[1], seq_len=8, stride=4, shuffle_mb=0.02, workers=w),
                               micro_batch=4, global_batch=4, seed=2) for w in (1, 0)]
    runs = [list(ld) for ld in loaders]
    assert len(runs[0]) == len(runs[1]) > 10
    for a, b in zip(*runs):
        assert torch.equal(a["notes"], b["notes"]) and torch.equal(a["window"], b["window"])
    print("same", loaders[0].bytes_read == loaders[1].bytes_read)
"""


@pytest.mark.slow
def test_spawned_workers_give_the_same_batches(corpus, tmp_path):
    """Where DataLoader workers are spawned, not forked (macOS; Python 3.14's forkserver default on Linux), the
    catalogue, the order and the piece index travel to them pickled; the batches are those of the trainer's process."""
    d, _, _ = corpus
    script = tmp_path / "spawned.py"
    script.write_text(SPAWNED)
    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, str(script), str(d)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(repo)})
    assert res.returncode == 0 and "same True" in res.stdout, res.stdout + res.stderr[-3000:]
