"""`python -m deepj.bench data` on a tiny generated corpus: the JSON line, its figures, and the parts it is built of."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_tiny_corpus, run_cli

from deepj.bench.data import _timed_loop, measure_sizes, replicate_shards
from deepj.data.loader import DataConfig, StreamingLoader
from deepj.data.manifest import Manifest
from deepj.preprocess import Settings, preprocess

KEYS = ("files_per_s_pipeline", "files_per_s_pretty_midi", "speedup_vs_pretty_midi", "mb_per_s", "shard_bytes",
        "dense_bytes", "compression_ratio", "loader_windows_per_s", "peak_rss_mb", "rss_1x_mb", "rss_10x_mb",
        "machine")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """9 pieces of 16 bars in 3 styles, and their shards (small shards: several per split)."""
    base = tmp_path_factory.mktemp("bench-data")
    midi = make_tiny_corpus(base / "midi", pieces_per_style=3, bars=16)
    shards = base / "shards"
    preprocess(str(midi), shards, Settings(shard_size_mb=0.002, val_fraction=0.2), workers=1, progress=False)
    return midi, shards


def test_sizes_are_tar_bytes_and_dense_rolls(corpus):
    _, shards = corpus
    manifest = Manifest.load(shards)
    sizes = measure_sizes(shards)
    tars = sorted(shards.glob("*.tar"))
    assert len(tars) == len(manifest.shards) >= 3
    assert sizes["shard_bytes"] == sum(p.stat().st_size for p in tars)
    steps = int(manifest.pieces.steps.sum())
    assert steps >= 9 * 16 * 16 - 9 * 8  # 9 pieces of about 256 steps
    assert sizes["dense_bytes"] == steps * 48 * 3 * 4  # (T, N, 3) float32 per piece, N = 84 - 36
    assert sizes["compression_ratio"] == pytest.approx(sizes["dense_bytes"] / sizes["shard_bytes"])
    assert sizes["pieces"] == 9


def test_replicated_shards_make_a_loadable_corpus_of_n_copies(corpus, tmp_path):
    _, shards = corpus
    one = StreamingLoader(DataConfig(dir=str(shards), seq_len=128, workers=0), micro_batch=2, global_batch=2)
    big = replicate_shards(shards, tmp_path / "x3", 3)
    manifest = Manifest.load(big)
    train = Manifest.load(shards).split("train")
    assert [s.name for s in manifest.shards] == [f"train-{i:06d}.tar" for i in range(3 * len(train))]
    assert [s.sha256 for s in manifest.shards] == [s.sha256 for s in train] * 3  # same bytes, same checksums
    three = StreamingLoader(DataConfig(dir=str(big), seq_len=128, workers=0), micro_batch=2, global_batch=2)
    assert three.total_windows == 3 * one.total_windows
    batch = next(iter(three))  # reading checks every copy's size and sha256 against the new manifest
    assert batch["notes"].shape == (2, 129, 48, 3)


def test_timed_loop_stops_at_the_time_bound_and_wraps_passes(tmp_path):
    files = []
    for i in range(3):
        files.append(tmp_path / f"f{i}.mid")
        files[-1].write_bytes(b"x" * (10 * (i + 1)))
    calls = []
    done, elapsed, nbytes, cpu = _timed_loop(files, 0.05, calls.append)
    assert done == len(calls) > 3  # several passes over 3 files
    assert calls[:4] == [files[0], files[1], files[2], files[0]]
    assert 0.05 <= elapsed < 1.0
    assert nbytes == sum(10 * (files.index(p) + 1) for p in calls)
    assert 0 < cpu <= elapsed + 0.01  # a busy loop in one thread
    assert _timed_loop(files, 0.0, lambda p: None)[0] == 1  # at least one file


@pytest.mark.slow
def test_bench_data_end_to_end(corpus):
    midi, _ = corpus
    res = run_cli("-m", "deepj.bench", "data", "--midi", str(midi), "--seconds", "0.5", "--repeats", "1",
                  "--batch", "2", "--workers-list", "0,1", "--shard-size-mb", "0.002", timeout=300, check=True)
    lines = res.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    assert all(k in out for k in KEYS), sorted(set(KEYS) - set(out))
    assert "compression ratio" in res.stdout  # the table precedes the JSON line
    assert out["files_per_s_pipeline"] > 0 and out["files_per_s_pretty_midi"] > 0 and out["mb_per_s"] > 0
    assert out["speedup_vs_pretty_midi"] > 1  # symusic + numpy against pure-Python mido parsing
    assert out["reading_files"] == 9 and out["pretty_midi_refused"] == 0
    assert out["preprocess_files"] == 9 and set(out["preprocess_wall_s"]) == {"1", "2"}
    assert out["dense_bytes"] > out["shard_bytes"] > 0 and out["compression_ratio"] > 1
    assert set(out["loader_windows_per_s"]) == {"0", "1"}
    assert all(r > 0 for r in out["loader_windows_per_s"].values())
    assert out["loader_runs"]["1"]["worker_peak_rss_mb"] > 0  # the worker's own high-water mark was sampled
    assert out["rss_windows"]["1x"] == out["rss_windows"]["10x"] > 0
    assert 50 < out["rss_1x_mb"] < 4000 and 50 < out["rss_10x_mb"] < 4000
    assert out["peak_rss_mb"] >= out["loader_runs"]["0"]["peak_rss_mb"] > 0
    assert out["machine"]["cores"] >= 1 and out["machine"]["torch"]
