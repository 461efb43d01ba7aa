"""`python -m deepj.bench scale` end to end at a tiny scale (2 copies of a generated corpus, 2,000 windows per loader
run, 4 training steps), and the parts whose failure the end-to-end run would not show."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_corpus, run_cli

from deepj.bench.scale import _distinct, build_corpus, compare_outputs
from deepj.corpus.folder import iter_midi_paths
from deepj.preprocess import preprocess


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """24 pieces of 24 bars in 3 styles: 17 windows of 128 steps each, so that a copy holds a global batch of 256."""
    return make_tiny_corpus(tmp_path_factory.mktemp("bench-scale") / "midi", pieces_per_style=8, bars=24)


def test_build_corpus_links_each_file_under_new_names_in_its_folder(source, tmp_path):
    info = build_corpus(source, tmp_path / "copies", 3)
    files = [p for p, _ in iter_midi_paths(source)]
    assert info["files"] == 3 * len(files) == 3 * info["source_files"] and info["link"] == "hard link"
    made = sorted(p.relative_to(tmp_path / "copies").as_posix() for p, _ in iter_midi_paths(tmp_path / "copies"))
    assert len(made) == 3 * len(files)
    assert "baroque/bach/piece00--c0002.mid" in made
    assert (tmp_path / "copies/classical/mozart/piece07--c0000.mid").read_bytes() == \
        (source / "classical/mozart/piece07.mid").read_bytes()


def test_compare_outputs_names_a_differing_shard(source, tmp_path):
    a = tmp_path / "a"
    preprocess(str(source), a, workers=1, progress=False)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    same = compare_outputs(a, b)
    assert same["identical"] and same["files_compared"] == len(list(a.glob("*.tar"))) + 2
    tar = sorted(b.glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[600] ^= 1  # inside the first member's bytes: the same size, other content
    tar.write_bytes(bytes(data))
    assert compare_outputs(a, b) == {"identical": False, "files_compared": same["files_compared"],
                                     "differing": [tar.name]}
    (b / "pieces.npy").unlink()
    assert "pieces.npy" in compare_outputs(a, b)["differing"]


def test_distinct_counts_per_row():
    rows = np.array([[3, 1, 3, 3], [0, 1, 2, 3], [5, 5, 5, 5]])
    assert _distinct(rows).tolist() == [2, 4, 1]


def test_midi_with_factor_is_refused(source):
    res = run_cli("-m", "deepj.bench", "scale", "--midi", str(source), "--factor", "2")
    assert res.returncode == 2 and "--midi" in res.stderr


@pytest.mark.slow
def test_bench_scale_end_to_end(source):
    res = run_cli("-m", "deepj.bench", "scale", "--source", str(source), "--factor", "2", "--windows", "2000",
                  "--pm-seconds", "0.5", "--shuffle-batches", "50", "--train-steps", "4", "--shard-size-mb", "0.02",
                  timeout=300, check=True)
    lines = res.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    assert "bench wall time" in res.stdout and "target:" in res.stdout
    source_files = len(list(iter_midi_paths(source)))

    corpus = out["corpus"]
    assert corpus["files"] == 2 * source_files == 2 * corpus["source_files"]
    pre = out["preprocess"]
    assert set(pre["runs"]) == {"1", "2"}
    for run in pre["runs"].values():
        assert run["files"] == corpus["files"] and run["wall_s"] > 0 and run["peak_rss_mb"] > 0
    assert pre["runs"]["2"]["processes"] >= 3  # the main process and its 2 readers were seen
    sizes = pre["sizes"]
    assert sizes["shards"] >= 2  # --shard-size-mb 0.02: more than one shard to compare
    assert pre["identical"] is True and pre["files_compared"] == sizes["shards"] + 2
    # Copies are the same bytes, so the same pieces: the corpus is exactly twice the source preprocessed once.
    per_copy = corpus["per_copy"]
    assert (sizes["pieces"], sizes["steps"], sizes["dense_bytes"]) == \
        (2 * per_copy["pieces"], 2 * per_copy["steps"], 2 * per_copy["dense_bytes"])
    assert sizes["dense_bytes"] == sizes["steps"] * 48 * 3 * 4
    pm = out["pretty_midi"]
    assert 1 <= pm["files_parsed"] <= corpus["files"] and pm["errors"] == 0
    assert pm["all_files_s"] == pytest.approx(corpus["files"] / pm["files_per_s"])
    assert pre["speedup_vs_pretty_midi"] == pytest.approx(pm["all_files_s"] / pre["runs"]["2"]["wall_s"])

    loader = out["loader"]
    assert set(loader) == {"1x", "10x"}
    assert loader["10x"]["plan"]["train_pieces"] == 10 * loader["1x"]["plan"]["train_pieces"]
    for scale in loader.values():
        assert scale["plan"]["catalogue_bytes_per_piece"] == 14  # steps, notes, style columns + the permutation
        assert set(scale["runs"]) == {"0", "1", "2"}
        for w, run in scale["runs"].items():
            assert 2000 <= run["windows"] < 2000 + 64  # whole batches of 64
            assert run["bytes_per_window"] > 0 and run["windows_per_s"] > 0 and run["first_batch_s"] > 0
            # each epoch forks its own workers; each was sampled before it stopped
            assert len(run["workers_above_baseline_mb"]) == int(w) * run["epochs"]
            # a worker's peak against its own RSS at start (reported by the wrapped init hook) cannot be negative
            assert all(x >= 0 for x in run["workers_above_baseline_mb"])
            assert 0 <= run["main_above_baseline_mb"] <= run["peak_above_baseline_mb"]
    # 2,000 windows span several epochs of the 1x corpus, and a 10x epoch is 10 times longer.
    assert loader["1x"]["runs"]["0"]["epochs"] > 1 == loader["10x"]["runs"]["0"]["epochs"]

    shuffle = out["shuffle"]
    assert set(shuffle) == {"source", "1x", "10x"}
    for scale in shuffle.values():
        for g in (64, 256):
            q = scale[f"batch_{g}"]
            assert 1 <= q["batches"] <= 50
            for key in ("distinct_pieces", "uniform_distinct_pieces"):
                assert 1 <= q[key] <= min(g, scale["train_pieces"])
            for key in ("distinct_styles", "uniform_distinct_styles"):
                assert 1 <= q[key] <= 3

    train = out["train"]
    assert train["steps"] == 4 and set(train["ranks"]) == {"0", "1"}
    for rank in train["ranks"].values():
        assert rank["peak_rss_mb"] > 0 and rank["workers_seen"] >= 1 and rank["worker_peak_rss_mb"] > 0

    names = {t["name"]: t for t in out["targets"]}
    assert names["preprocess outputs identical, 1 vs 2 workers"]["ok"] is True
    first = names["loader time to first batch (worst)"]
    assert first["value"] == max(r["first_batch_s"] for s in loader.values() for r in s["runs"].values())
    assert first["ok"] == (first["value"] <= 2)
    assert out["wall_s"] > train["wall_s"]
