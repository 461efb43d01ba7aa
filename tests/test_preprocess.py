"""`python -m deepj.preprocess`: shards, manifest, report, splits, bad files, idempotent reruns, MAESTRO and the CLI."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from midi_files import bad_files
from test_corpus import MAESTRO_CSV, write_piece

from deepj import preprocess_merge
from deepj.data.manifest import Manifest, ShardError
from deepj.data.shards import decode_notes, piece_key
from deepj.music.midi_io import read_midi
from deepj.music.representation import ReprConfig
from deepj.music.styles import StyleTree
from deepj.preprocess import assign_splits, main, process_file, split_hash

REPO = Path(__file__).resolve().parents[1]


def read_shards(out: Path, split: str) -> list[tuple[dict, object]]:
    """Every sample of a split, in shard and tar order: (json meta, decoded notes)."""
    samples = []
    for shard in sorted(out.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        keys = list(dict.fromkeys(name.split(".", 1)[0] for name in members))
        for key in keys:
            meta = json.loads(members[f"{key}.json"])
            assert key == piece_key(meta["source"])
            samples.append((meta, decode_notes(members[f"{key}.notes.bin"])))
    return samples


def make_tree(root: Path, n_per_style: int = 3) -> list[str]:
    sources = []
    for k, style in enumerate(["baroque/bach", "baroque/handel", "classical/mozart"]):
        for i in range(n_per_style):
            rel = f"{style}/piece{i}.mid"
            write_piece(root / rel, steps=48 + 16 * i, base=48 + 6 * k, seed=10 * k + i)
            sources.append(rel)
    return sources


def sha_all(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
            if p.name != "report.json"}


def run(*args) -> int:
    return main([str(a) for a in args] + ["--workers", "1"])


# --------------------------------------------------------------------------------------------------- folder tree

def test_folder_to_shards(tmp_path, capsys):
    src, out = tmp_path / "midi", tmp_path / "shards"
    sources = make_tree(src)
    assert run(src, out, "--val-fraction", "0.3", "--seed", "3") == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "report: " + str(out / "report.json") in printed
    m = Manifest.load(out)
    assert m.styles.styles == ("baroque/bach", "baroque/handel", "classical/mozart")
    assert m.representation == ReprConfig(36, 84, sustain=True)
    assert m.settings["val_fraction"] == 0.3 and m.settings["source"] == "folder"
    assert m.tool == "deepj 0.1.0"
    # on disk: the schema other tools read (the typed manifest writes back exactly the file)
    raw = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert raw["styles"] == ["baroque/bach", "baroque/handel", "classical/mozart"]
    assert raw["levels"] == {"bach": [0], "baroque": [0, 1], "baroque/bach": [0], "baroque/handel": [1],
                             "classical": [2], "classical/mozart": [2], "handel": [1], "mozart": [2]}
    assert raw["level_names"] == [["baroque", "classical"], ["bach", "handel", "mozart"]]
    assert raw["representation"] == {"min_pitch": 36, "max_pitch": 84, "steps_per_beat": 4,
                                     "grid": "beat-relative 16th notes", "sustain": True}
    assert raw["tool"] == "deepj 0.1.0" and raw["format_version"] == 2
    assert raw["index"]["file"] == "pieces.npy" and raw["index"]["bytes"] == (out / "pieces.npy").stat().st_size
    assert m.to_json() == raw

    expected_split = {s: ("val" if split_hash(s, 3) < 0.3 else "train") for s in sources}
    cfg = ReprConfig()
    seen = {}
    for split in ("train", "val"):
        samples = read_shards(out, split)
        assert [meta["source"] for meta, _ in samples] == sorted(meta["source"] for meta, _ in samples)
        assert [meta["steps"] for meta, _ in samples] == m.piece_steps(split).tolist()
        assert [meta["style_id"] for meta, _ in samples] == m.piece_styles(split).tolist()
        assert m.totals[split]["pieces"] == len(samples)
        assert m.totals[split]["steps"] == sum(meta["steps"] for meta, _ in samples)
        for meta, notes in samples:
            seen[meta["source"]] = split
            assert meta["style"] == meta["source"].rsplit("/", 1)[0]
            assert m.styles.styles[meta["style_id"]] == meta["style"]
            ref = read_midi(src / meta["source"], cfg)
            assert (notes == ref).all() and len(notes) == meta["notes"]
    assert seen == expected_split
    assert {"train", "val"} == set(seen.values())
    assert m.totals["files_seen"] == 9 and m.totals["files_skipped"] == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pieces_written"] == 9 and report["counts"] == {} and report["files_seen"] == 9


def test_small_shards_and_style_levels(tmp_path):
    src, out = tmp_path / "midi", tmp_path / "shards"
    make_tree(src, n_per_style=4)
    assert run(src, out, "--shard-size-mb", "0.002", "--val-fraction", "0.01") == 0  # ~2 kB: a shard per 1-2 pieces
    m = Manifest.load(out)
    names = [e.name for e in m.shards]
    # tarfile writes in 10 kB records, so a tiny target size means a shard per record: several train shards
    assert sum(n.startswith("train-") for n in names) >= 2
    assert names == sorted(names, key=lambda n: (n.split("-")[0] != "train", n))
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(names)
    assert m.totals["val"]["pieces"] == 1  # the fraction rounds to no piece, but val is never left empty
    # shards written in parallel are the same bytes as one process's, index and manifest too
    assert main([str(src), str(tmp_path / "two"), "--shard-size-mb", "0.002", "--val-fraction", "0.01",
                 "--workers", "2"]) == 0
    assert sha_all(tmp_path / "two") == sha_all(out) and len(sha_all(out)) >= 5
    # the index says where each piece's notes lie in its shard, and their crc32
    first = m.shard_first_piece()
    for i, entry in enumerate(m.shards):
        with tarfile.open(out / entry.name) as tar:
            members = [x for x in tar.getmembers() if x.name.endswith(".notes.bin")]
            blobs = [tar.extractfile(x).read() for x in members]
        rec = m.pieces.records(np.arange(first[i], first[i + 1]))
        assert rec["offset"].tolist() == [x.offset_data for x in members]
        assert rec["crc32"].tolist() == [zlib.crc32(b) for b in blobs]
        assert rec["notes"].tolist() == [len(decode_notes(b)) for b in blobs]
    tree = StyleTree.from_leaves(["a/x/1", "a/y", "b/x"])
    assert tree.levels == {"1": [0], "a": [0, 1], "a/x": [0], "a/x/1": [0], "a/y": [1], "b": [2], "b/x": [2],
                           "x": [0, 2], "y": [1]}
    assert tree.level_names == (("a", "b"), ("x", "y"), ("1",))


def test_split_is_deterministic_and_stable_when_files_are_added(tmp_path):
    sources = [f"s/{i:03d}.mid" for i in range(200)]
    first = assign_splits(sources, [None] * 200, 0.1, seed=7)
    assert first == assign_splits(sources, [None] * 200, 0.1, seed=7)
    assert 8 <= first.count("val") <= 35
    more = sources + [f"t/{i:03d}.mid" for i in range(100)]
    second = assign_splits(more, [None] * 300, 0.1, seed=7)
    assert second[:200] == first  # every earlier piece keeps its split
    assert assign_splits(sources, [None] * 200, 0.1, seed=8) != first
    # official splits are kept as given
    assert assign_splits(["a", "b"], ["test", "train"], 0.9, seed=0) == ["test", "train"]
    # at least one val piece with two or more pieces: the one with the smallest hash
    two = ["x.mid", "y.mid"]
    smallest = min(two, key=lambda s: split_hash(s, 0))
    assert assign_splits(two, [None, None], 1e-9, 0) == ["val" if s == smallest else "train" for s in two]
    assert assign_splits(["x.mid"], [None], 1e-9, 0) == ["train"]
    assert assign_splits(two, [None, None], 0.0, 0) == ["train", "train"]

    # end to end: a folder that grows keeps every old piece in its split
    src = tmp_path / "midi"
    make_tree(src, n_per_style=4)
    assert run(src, tmp_path / "a", "--val-fraction", "0.3") == 0
    before = {meta["source"]: s for s in ("train", "val") for meta, _ in read_shards(tmp_path / "a", s)}
    for i in range(5):
        write_piece(src / "classical" / "haydn" / f"new{i}.mid", seed=100 + i)
    assert run(src, tmp_path / "b", "--val-fraction", "0.3") == 0
    after = {meta["source"]: s for s in ("train", "val") for meta, _ in read_shards(tmp_path / "b", s)}
    assert len(after) == len(before) + 5
    assert {k: after[k] for k in before} == before


# --------------------------------------------------------------------------------------------------- bad files

def test_bad_files_are_reported_not_fatal(tmp_path, capsys):
    src, out = tmp_path / "midi", tmp_path / "shards"
    expected = {f"bad/{name}": reason for name, (_, reason) in bad_files(src / "bad").items()}
    (src / "bad" / "dangling.mid").symlink_to(src / "bad" / "nowhere.mid")
    expected["bad/dangling.mid"] = "unreadable"
    write_piece(src / "bad" / "short.mid", steps=8)
    expected["bad/short.mid"] = "too-short"
    write_piece(src / "bad" / "too_high.mid", steps=64, base=100)  # every note above the range
    expected["bad/too_high.mid"] = "out-of-range"
    good = [write_piece(src / "good" / f"g{i}.mid", steps=64, seed=i) for i in range(3)]
    assert run(src, out) == 0
    report = json.loads((out / "report.json").read_text())
    assert {s["file"]: s["reason"] for s in report["skipped"]} == expected
    assert report["counts"]["corrupt"] == 5 and report["counts"]["too-short"] == 1
    assert report["pieces_written"] == 3 and report["files_seen"] == len(expected) + 3
    short = next(s for s in report["skipped"] if s["file"] == "bad/short.mid")
    assert short["detail"] == "8 steps < --min-steps 32"
    m = Manifest.load(out)
    assert m.styles.styles == ("good",) and m.totals["files_skipped"] == len(expected)
    assert sum(m.totals[s]["pieces"] for s in ("train", "val")) == len(good)
    printed = capsys.readouterr().out
    assert f"skipped {len(expected)} of {len(expected) + 3} files: corrupt 5" in printed


def test_only_bad_files_exit_nonzero(tmp_path, capsys):
    src = tmp_path / "midi"
    bad_files(src)
    assert run(src, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "nothing usable" in err and "corrupt 5" in err
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["pieces_written"] == 0
    (tmp_path / "empty").mkdir()
    assert run(tmp_path / "empty", tmp_path / "out2") == 1
    assert "no .mid/.midi files" in capsys.readouterr().err
    assert run(tmp_path / "missing", tmp_path / "out3") == 2
    assert "does not exist" in capsys.readouterr().err


def test_process_file_is_the_per_file_work(tmp_path):
    path = write_piece(tmp_path / "p.mid", steps=40)
    notes = process_file(path, ReprConfig(), min_steps=32)
    assert int(notes["end"].max()) == 40
    with pytest.raises(Exception, match="too-short"):
        process_file(path, ReprConfig(), min_steps=41)


# --------------------------------------------------------------------------------------------------- reruns

def test_rerun_is_idempotent_and_settings_are_guarded(tmp_path, capsys):
    src, out = tmp_path / "midi", tmp_path / "shards"
    make_tree(src, n_per_style=4)
    assert run(src, out, "--shard-size-mb", "0.004") == 0
    first = sha_all(out)
    assert run(src, out, "--shard-size-mb", "0.004") == 0
    assert sha_all(out) == first  # every shard and the manifest, byte for byte
    many = [n for n in first if n.endswith(".tar")]

    capsys.readouterr()
    assert run(src, out, "--shard-size-mb", "0.004", "--seed", "5") == 2
    err = capsys.readouterr().err
    assert "seed: 0 -> 5" in err and "--force" in err
    assert sha_all(out) == first  # refused: nothing touched

    assert run(src, out, "--shard-size-mb", "64", "--seed", "5", "--force") == 0
    m = Manifest.load(out)
    assert m.settings["seed"] == 5 and m.settings["shard_size_mb"] == 64.0
    now = sorted(p.name for p in out.glob("*.tar"))
    assert now == ["train-000000.tar", "val-000000.tar"] and len(many) > 2  # the stale small shards are gone
    report = json.loads((out / "report.json").read_text())
    assert set(report["stale_shards_removed"]) == set(many) - set(now)
    assert not list(out.glob("*.tmp"))


# --------------------------------------------------------------------------------------------------- MAESTRO

MAESTRO_PICKS = {  # composer -> split: one real row each, spanning the official splits and four periods
    ("Frédéric Chopin", "train"): "romantic/chopin",
    ("Johann Sebastian Bach", "validation"): "baroque/bach",
    ("Wolfgang Amadeus Mozart", "test"): "classical/mozart",
    ("Alban Berg", "train"): "modern/berg",
    ("Sergei Rachmaninoff / György Cziffra", "train"): "romantic/rachmaninoff",
    ("Joseph Haydn", "test"): "classical/haydn",
}


def _maestro_fixture(tmp_path: Path) -> tuple[Path, dict[str, tuple[str, str]]]:
    csv_path = tmp_path / "maestro" / "maestro-v3.0.0.csv"
    csv_path.parent.mkdir()
    shutil.copy(MAESTRO_CSV, csv_path)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    picked = {}
    for (composer, split), style in MAESTRO_PICKS.items():
        row = next(r for r in rows if r["canonical_composer"] == composer and r["split"] == split)
        write_piece(csv_path.parent / row["midi_filename"], steps=64, seed=len(picked))
        picked[row["midi_filename"]] = (style, {"validation": "val"}.get(split, split))
    return csv_path, picked


def test_maestro_csv(tmp_path, capsys):
    csv_path, picked = _maestro_fixture(tmp_path)
    out = tmp_path / "shards"
    assert run(csv_path, out) == 0
    m = Manifest.load(out)
    assert list(m.styles.styles) == sorted(style for style, _ in picked.values())
    assert m.settings["source"] == "maestro"
    got = {meta["source"]: (meta["style"], split) for split in ("train", "val", "test")
           for meta, _ in read_shards(out, split)}
    assert got == picked  # official split kept, composer -> period/composer
    assert [e.name for e in m.shards] == ["train-000000.tar", "val-000000.tar", "test-000000.tar"]
    assert m.totals["test"]["pieces"] == 2
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"missing": 1276 - 6} and report["unknown_composers"] == {}
    assert all(s["reason"] == "missing" for s in report["skipped"])

    periods = tmp_path / "periods.json"
    periods.write_text(json.dumps({"Frédéric Chopin": "polish", "haydn": "vienna"}))
    assert main([str(csv_path), str(tmp_path / "o2"), "--periods", str(periods), "--workers", "1"]) == 0
    styles = Manifest.load(tmp_path / "o2").styles.styles
    assert "polish/chopin" in styles and "vienna/haydn" in styles and "romantic/chopin" not in styles
    assert Manifest.load(tmp_path / "o2").settings["periods"] == {"chopin": "polish", "haydn": "vienna"}

    broken = tmp_path / "maestro" / "broken.csv"
    with open(csv_path, newline="", encoding="utf-8") as f, open(broken, "w", newline="", encoding="utf-8") as g:
        reader = csv.DictReader(f)
        cols = [c for c in reader.fieldnames if c != "midi_filename"]
        w = csv.DictWriter(g, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(reader)
    capsys.readouterr()
    assert run(broken, tmp_path / "o3") == 2
    err = capsys.readouterr().err
    assert "midi_filename" in err and "broken.csv" in err


# --------------------------------------------------------------------------------------------------- CLI

@pytest.mark.slow
def test_cli_as_a_user_runs_it(tmp_path):
    src, out = tmp_path / "midi", tmp_path / "shards"
    make_tree(src)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "deepj.preprocess", str(src), str(out), "--workers", "2"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote " in proc.stdout and "report: " in proc.stdout
    m = Manifest.load(out)
    assert m.totals["train"]["pieces"] + m.totals["val"]["pieces"] == 9
    first = sha_all(out)
    # one process gives the same bytes as a pool of two (the manifest holds no output path, time or worker count)
    assert run(src, tmp_path / "one") == 0
    assert sha_all(tmp_path / "one") == first
    bad = subprocess.run([sys.executable, "-m", "deepj.preprocess", str(tmp_path / "nope"), str(out)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_a_format_1_folder_is_refused_then_upgraded_in_place(tmp_path):
    """A shard folder written before the piece index (format 1: per-piece lists in manifest.json) is refused with the
    command that upgrades it; the upgrade leaves the shards untouched and gives the same manifest and corpus hash as
    preprocessing again would."""
    src, out = tmp_path / "midi", tmp_path / "shards"
    make_tree(src, n_per_style=4)
    assert run(src, out, "--shard-size-mb", "0.002") == 0
    new = Manifest.load(out)
    raw = json.loads((out / "manifest.json").read_text())
    first = new.shard_first_piece()
    for i, entry in enumerate(raw["shards"]):  # the format-1 layout
        rec = new.pieces.records(np.arange(first[i], first[i + 1]))
        entry.update(piece_steps=rec["steps"].tolist(), piece_styles=rec["style"].tolist())
    del raw["index"]
    raw["format_version"] = 1
    (out / "manifest.json").write_text(json.dumps(raw))
    (out / "pieces.npy").unlink()
    shards = {k: v for k, v in sha_all(out).items() if k.endswith(".tar")}
    with pytest.raises(ShardError, match=f"format_version 1, this deepj reads 2.*preprocess_merge upgrade {out}"):
        Manifest.load(out)
    assert preprocess_merge.main(["upgrade", str(out)]) == 0
    upgraded = Manifest.load(out)
    assert upgraded == new and upgraded.hash == new.hash
    assert {k: v for k, v in sha_all(out).items() if k.endswith(".tar")} == shards
    assert preprocess_merge.main(["upgrade", str(out)]) == 2  # format 2 already: refused, nothing changed


def test_a_run_in_one_process_leaves_no_file_open(tmp_path):
    """With --workers 1 the main process reads and spools the pieces itself; its spool file is closed when the run
    ends (it was left open, holding the deleted spool's disk space, once per run)."""
    src = tmp_path / "midi"
    make_tree(src)
    before = sorted(os.listdir("/proc/self/fd"))
    for k in range(2):
        assert run(src, tmp_path / f"out{k}") == 0
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_the_same_notes_under_two_names_are_written_once(tmp_path):
    """A file copied under another name (or reached through two sources) becomes one piece: the first in source
    order; the copy is skipped as a duplicate naming it, in report.json, whatever the number of workers."""
    src = tmp_path / "midi"
    make_tree(src)
    shutil.copy(src / "baroque/bach/piece1.mid", src / "classical/mozart/copy-of-bach.mid")
    shutil.copy(src / "baroque/bach/piece1.mid", src / "baroque/bach/piece1 (1).mid")
    reports = []
    for workers in ("1", "2"):
        out = tmp_path / f"shards{workers}"
        assert main([str(src), str(out), "--workers", workers]) == 0
        m = Manifest.load(out)
        assert len(m.pieces) == 9
        report = json.loads((out / "report.json").read_text())
        dups = [s for s in report["skipped"] if s["reason"] == "duplicate"]
        assert dups == [{"file": "baroque/bach/piece1.mid", "reason": "duplicate",
                         "detail": "the same notes as baroque/bach/piece1 (1).mid"},
                        {"file": "classical/mozart/copy-of-bach.mid", "reason": "duplicate",
                         "detail": "the same notes as baroque/bach/piece1 (1).mid"}]
        reports.append(sha_all(out))
    assert reports[0] == reports[1]
    assert main([str(src), str(tmp_path / "all"), "--workers", "1", "--keep-duplicates"]) == 0
    assert len(Manifest.load(tmp_path / "all").pieces) == 11
