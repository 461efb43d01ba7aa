"""Preprocessing against bad input and bad circumstances (issue "hardening", items 4, 5, 9, 10, 11, 12):
transactional output folders, one run per folder, non-files and huge files, out-of-range timing, type-2 files,
malformed manifests and unusable output paths. Every run that could hang or exhaust memory on a regression runs in a
subprocess with a timeout and an address-space limit.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli, write_random_piece
from midi_files import Q, raw_midi, raw_notes, raw_off, raw_on, timing_files

from deepj import preprocess as pre
from deepj import preprocess_merge
from deepj.data.manifest import Manifest, ShardError
from deepj.data.shards import sha256_file
from deepj.music.midi_io import MidiError
from deepj.music.representation import ReprConfig, merge

PARSERS = ("symusic", "pretty_midi")
MEMORY_LIMIT = 4 * 2**30  # address space of a preprocess subprocess: a file read to the end of /dev/zero fails fast
TIMEOUT = 300  # seconds: a FIFO read that blocks fails the test instead of hanging CI


def corpus(root: Path, per_style: int = 4, styles=("baroque/bach", "classical/mozart")) -> Path:
    rng = np.random.default_rng(1)
    for style in styles:
        for i in range(per_style):
            write_random_piece(root / style / f"p{i:02d}.mid", rng, 4, 48, 72)  # 64 steps
    return root


def run(*args) -> int:
    return pre.main([str(a) for a in args] + ["--workers", "1"])


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry of the folder, hidden ones included: file -> sha256, folder -> "<dir>"."""
    return {p.name: "<dir>" if p.is_dir() else sha256_file(p) for p in sorted(folder.iterdir())}


def assert_loads(folder: Path) -> Manifest:
    """The manifest loads and every shard it lists is there with its size and checksum; no run left anything."""
    m = Manifest.load(folder)
    for e in m.shards:
        assert (folder / e.name).stat().st_size == e.bytes and sha256_file(folder / e.name) == e.sha256, e.name
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no lock, no staging folder
    return m


def limited(fsize: int | None = None):
    """preexec_fn for a subprocess: at most MEMORY_LIMIT of address space, and files of at most `fsize` bytes
    (writing more fails with EFBIG, Python ignoring SIGXFSZ: a full disk, as far as the writer can tell)."""
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return apply


def run_limited(*args, fsize: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deepj.preprocess", *map(str, args), "--workers", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=limited(fsize),
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


# --------------------------------------------------------------------------------------------------- 4: transactions

def test_a_rerun_that_runs_out_of_disk_leaves_the_old_output_as_it_was(tmp_path):
    src, out = corpus(tmp_path / "midi", per_style=20), tmp_path / "out"
    assert run(src, out, "--shard-size-mb", "0.01") == 0  # shards of 10-30 kB
    before = snapshot(out)
    assert max((out / n).stat().st_size for n in before) < 48_000
    # the rerun writes one shard per split, about 100 kB for train: its writes fail past 48 kB, midway
    res = run_limited(src, out, "--shard-size-mb", "64", "--force", fsize=48_000)
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"writing the output in {out} failed: File too large" in res.stderr
    assert "the earlier output there is unchanged" in res.stderr and "Traceback" not in res.stderr
    assert snapshot(out) == before  # every file, byte for byte; no staging folder, no lock
    assert_loads(out)
    from deepj.data.loader import DataConfig, StreamingLoader

    loader = StreamingLoader(DataConfig(dir=str(out), seq_len=32, stride=16, workers=0), "train", micro_batch=2,
                             global_batch=2)
    assert sum(len(b["window"]) for b in loader) == 2 * loader.steps_per_epoch()  # trains as before
    # the same rerun with room to write replaces it
    assert run(src, out, "--shard-size-mb", "64", "--force") == 0
    assert [e.name for e in assert_loads(out).shards] == ["train-000000.tar", "val-000000.tar"]


@pytest.mark.parametrize("fail_at", [1, 2, 5, 9])
def test_a_commit_that_fails_midway_is_rolled_back(tmp_path, monkeypatch, capsys, fail_at):
    """The n-th rename of the commit fails (1: moving the old manifest aside; later: shards, the report, the new
    manifest): every rename before it is undone."""
    from deepj.data.shards import OutputFolder

    src, out = corpus(tmp_path / "midi"), tmp_path / "out"
    assert run(src, out, "--shard-size-mb", "0.004") == 0
    before = snapshot(out)
    real_commit, real_replace = OutputFolder.commit, os.replace
    calls = []

    def failing_replace(a, b):
        calls.append(b)
        if len(calls) == fail_at:
            raise OSError(errno.EIO, "Input/output error (injected)", str(b))
        return real_replace(a, b)

    def commit(self, files, stale):
        monkeypatch.setattr(os, "replace", failing_replace)
        try:
            return real_commit(self, files, stale)
        finally:
            monkeypatch.setattr(os, "replace", real_replace)

    monkeypatch.setattr(OutputFolder, "commit", commit)
    capsys.readouterr()
    assert run(src, out, "--shard-size-mb", "0.004", "--seed", "7", "--force") == 2
    assert "Input/output error (injected)" in capsys.readouterr().err
    assert len(calls) == 2 * fail_at - 1  # each rename before the failing one was undone, once
    assert snapshot(out) == before
    assert_loads(out)


def test_a_merge_that_fails_midway_leaves_the_old_output_as_it_was(tmp_path, monkeypatch, capsys):
    src, work, out = corpus(tmp_path / "midi"), tmp_path / "work", tmp_path / "out"
    for i in range(2):
        assert preprocess_merge.run_slice(str(src), work, index=i, count=2, list_file=None,
                                          preprocess_args=["--workers", "1"]) == 0
    assert preprocess_merge.main(["merge", str(work), str(out)]) == 0
    before = snapshot(out)
    placed = []
    real_place, real_rewrite = preprocess_merge._place, preprocess_merge.rewrite_shard

    def fail_second(real):
        def f(src_path, dst, *rest):
            placed.append(dst)
            if len(placed) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
            return real(src_path, dst, *rest)
        return f

    monkeypatch.setattr(preprocess_merge, "_place", fail_second(real_place))
    monkeypatch.setattr(preprocess_merge, "rewrite_shard", fail_second(real_rewrite))
    capsys.readouterr()
    assert preprocess_merge.main(["merge", str(work), str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert snapshot(out) == before
    assert_loads(out)


# --------------------------------------------------------------------------------------------------- 5: one run

def test_a_second_run_is_refused_while_the_first_holds_the_folder(tmp_path, monkeypatch):
    src, out = corpus(tmp_path / "midi"), tmp_path / "out"
    started, go = threading.Event(), threading.Event()
    real = pre._read_all

    def held(*args, **kwargs):  # the first run waits, holding the folder, until the second one has been tried
        started.set()
        assert go.wait(TIMEOUT)
        return real(*args, **kwargs)

    monkeypatch.setattr(pre, "_read_all", held)
    result = {}
    first = threading.Thread(target=lambda: result.update(rc=run(src, out)))
    first.start()
    try:
        assert started.wait(TIMEOUT)
        second = run_cli("-m", "deepj.preprocess", str(src), str(out), "--workers", "1", timeout=TIMEOUT)
    finally:
        go.set()
        first.join(TIMEOUT)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"{out} is in use by another preprocess run (pid {os.getpid()} on host {socket.gethostname()}" \
        in second.stderr
    assert "Traceback" not in second.stderr
    assert result["rc"] == 0  # the first completed, undisturbed
    m = assert_loads(out)
    assert m.totals["train"]["pieces"] + m.totals["val"]["pieces"] == 8


def test_a_killed_run_blocks_nothing_and_its_leftovers_are_removed(tmp_path):
    src, out = corpus(tmp_path / "midi"), tmp_path / "out"
    out.mkdir()
    (out / ".preprocess-spool.tmp").write_bytes(b"an older deepj's spool")
    code = ("import os, sys; from deepj.data.shards import OutputFolder; f = OutputFolder(sys.argv[1]); f.open(); "
            "(f.staging / 'spool.tmp').write_bytes(b'half'); os.kill(os.getpid(), 9)")
    killed = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert killed.returncode == -9, killed.stderr
    leftovers = sorted(p.name for p in out.iterdir())
    assert ".lock" in leftovers and any(n.startswith(".building-") for n in leftovers)
    assert "pid " in (out / ".lock").read_text()  # the holder it named, now dead: its lock went with it
    assert run(src, out) == 0
    assert_loads(out)  # the staging folder and the old spool are gone, the lock file too


# --------------------------------------------------------------------------------------------------- 9: not files

def test_fifos_devices_sockets_and_huge_files_are_skipped_unread(tmp_path, monkeypatch):
    src, out = tmp_path / "midi", tmp_path / "out"
    corpus(src, per_style=2)
    bad = src / "bad"
    bad.mkdir()
    os.mkfifo(bad / "fifo.mid")
    (bad / "to_fifo.mid").symlink_to(bad / "fifo.mid")
    (bad / "zero.mid").symlink_to("/dev/zero")
    (bad / "null.mid").symlink_to("/dev/null")
    monkeypatch.chdir(bad)  # a relative name: AF_UNIX paths are short
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock.mid")
    good = (src / "baroque" / "bach" / "p00.mid").read_bytes()
    with open(bad / "huge.mid", "wb") as f:  # a valid start, then 100 MB of zeros (sparse: no disk used)
        f.write(good)
        f.truncate(100 * 2**20)
    try:
        res = run_limited(src, out)
    finally:
        sock.close()
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    got = {s["file"]: (s["reason"], s["detail"]) for s in report["skipped"]}
    assert {k: r for k, (r, _) in got.items()} == {
        "bad/fifo.mid": "not-a-file", "bad/to_fifo.mid": "not-a-file", "bad/zero.mid": "not-a-file",
        "bad/null.mid": "not-a-file", "bad/sock.mid": "not-a-file", "bad/huge.mid": "too-large"}
    assert got["bad/fifo.mid"][1] == "a FIFO, not a file" and got["bad/zero.mid"][1] == "a character device, not a file"
    assert got["bad/huge.mid"][1] == f"{100 * 2**20} bytes > the limit of {64 * 2**20} (--max-file-mb)"
    assert report["pieces_written"] == 4


def test_max_file_mb_is_a_setting(tmp_path, capsys):
    src = corpus(tmp_path / "midi", per_style=2)
    assert run(src, tmp_path / "out", "--max-file-mb", "0.0001") == 1  # 104 bytes: every file is larger
    assert "all 4 files were skipped (too-large 4)" in capsys.readouterr().err
    assert run(src, tmp_path / "out", "--max-file-mb", "0") == 2
    assert "--max-file-mb must be > 0" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- 10, 11: timing

@pytest.mark.parametrize("parser", PARSERS)
def test_out_of_range_timing_and_type_2_get_one_verdict_from_both_parsers(tmp_path, parser):
    files = timing_files(tmp_path)
    details = {}
    for name, (path, reason) in files.items():
        with pytest.raises(MidiError) as err:
            pre.process_file(path, ReprConfig(), min_steps=1, parser=parser)
        assert err.value.reason == reason, (name, err.value)
        details[name] = err.value.detail
    other = "pretty_midi" if parser == "symusic" else "symusic"
    for name, (path, _) in files.items():  # the very same words: decided before either parser reads the file
        with pytest.raises(MidiError) as err:
            pre.process_file(path, ReprConfig(), min_steps=1, parser=other)
        assert err.value.detail == details[name], name
    assert "44739276 steps" in details["far_note.mid"] and "tick 2147484532" in details["negative_ticks.mid"]


def test_steps_are_range_checked_before_the_uint32_cast():
    with pytest.raises(ValueError, match="steps must lie in"):
        merge(np.array([60]), np.array([0]), np.array([2**32 + 3]), np.array([100]))
    with pytest.raises(ValueError, match="steps must lie in"):
        merge(np.array([60]), np.array([-1]), np.array([3]), np.array([100]))


@pytest.mark.parametrize("parser", PARSERS)
def test_preprocess_reports_timing_verdicts_and_keeps_music_with_rests(tmp_path, parser):
    src, out = tmp_path / "midi", tmp_path / "out"
    corpus(src, per_style=2)
    expected = {f"bad/{name}": reason for name, (_, reason) in timing_files(src / "bad").items()}
    rests = raw_notes(8) + [(8 * Q, raw_on(64)), (Q, raw_off(64))] + raw_notes(15)  # 8 of 33 steps silent
    (src / "ok" / "rests.mid").parent.mkdir()
    (src / "ok" / "rests.mid").write_bytes(raw_midi([rests]))
    assert run(src, out, "--parser", parser) == 0
    report = json.loads((out / "report.json").read_text())
    assert {s["file"]: s["reason"] for s in report["skipped"]} == expected
    assert report["pieces_written"] == 5
    assert Manifest.load(out).settings["max_steps"] == 100_000


def test_max_steps_and_max_silence_are_settings(tmp_path, capsys):
    src = corpus(tmp_path / "midi", per_style=1)  # two pieces of 64 steps
    assert run(src, tmp_path / "a", "--max-steps", "48") == 1
    assert "too-long 2" in capsys.readouterr().err
    silent = tmp_path / "silent"
    silent.mkdir()
    shutil.copy(timing_files(tmp_path / "t")["mostly_silent.mid"][0], silent / "s.mid")
    assert run(silent, tmp_path / "b", "--min-steps", "1") == 1
    assert "mostly-silent 1" in capsys.readouterr().err
    assert run(silent, tmp_path / "c", "--min-steps", "1", "--max-silence", "1") == 0  # 1: keep every piece
    assert run(src, tmp_path / "d", "--max-steps", str(2**24 + 1)) == 2
    assert "--max-steps must be in [--min-steps (32), 16777216]" in capsys.readouterr().err


def test_a_file_name_that_is_not_utf8_is_skipped_not_fatal(tmp_path):
    src, out = corpus(tmp_path / "midi", per_style=2), tmp_path / "out"
    os.rename(src / "baroque" / "bach" / "p01.mid", os.fsencode(src / "baroque" / "bach") + b"/caf\xe9.mid")
    assert run(src, out) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [(s["file"], s["reason"]) for s in report["skipped"]] == [("baroque/bach/caf\\xe9.mid", "bad-name")]
    assert report["pieces_written"] == 3
    assert_loads(out)


def test_a_manifest_from_an_older_deepj_is_rerun_without_force(tmp_path):
    """Settings this deepj added (absent from an older manifest) count as their defaults."""
    src, out = corpus(tmp_path / "midi", per_style=2), tmp_path / "out"
    assert run(src, out) == 0
    path = out / "manifest.json"
    raw = json.loads(path.read_text())
    for key in ("max_steps", "max_silence", "max_file_mb"):
        del raw["settings"][key]
    path.write_text(json.dumps(raw, indent=1))
    assert run(src, out) == 0
    assert Manifest.load(out).settings["max_silence"] == 0.9


# --------------------------------------------------------------------------------------------------- 11, 12: manifests

def _set(path: list, value):
    def edit(raw):
        node = raw
        for k in path[:-1]:
            node = node[k]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


BAD_MANIFESTS = {  # name -> (edit, words the message must hold besides the file's path)
    "styles a string": (_set(["styles"], "baroque/bach"), "styles is the string 'baroque/bach'"),
    "styles of numbers": (_set(["styles"], [1, 2]), "styles is a list of 2 items, a list of style names"),
    "styles repeated": (_set(["styles"], ["a", "a"]), "styles lists 'a' twice"),
    "totals a list": (_set(["totals"], []), "totals is a list of 0 items"),
    "totals disagree": (_set(["totals", "train", "pieces"], 999), "totals.train.pieces is 999, its shard entries"),
    "format_version true": (_set(["format_version"], True), "format_version True"),
    "representation a list": (_set(["representation"], [36, 84]), "representation is a list of 2 items"),
    "min_pitch a string": (_set(["representation", "min_pitch"], "36"), "representation.min_pitch is the string"),
    "shards an object": (_set(["shards"], {}), "shards is an object of 0 keys"),
    "entry a string": (_set(["shards", 0], "train-000000.tar"), "shards[0] is the string"),
    "entry lacks steps": (_set(["shards", 0, "steps"], KeyError), "shards[0] ('train-000000.tar') lacks steps"),
    "pieces a boolean": (_set(["shards", 0, "pieces"], True), "shards[0].pieces is the boolean true"),
    "steps disagree": (lambda raw: (_set(["shards", 0, "steps"], 1)(raw), _set(["totals", "train", "steps"], 1)(raw)),
                       "the records of train-000000.tar hold"),
    "index missing": (_set(["index"], KeyError), "index is null, a JSON object naming the piece index"),
    "index elsewhere": (_set(["index", "file"], "../pieces.npy"), "index.file '../pieces.npy' is not a file name"),
    "index of another size": (_set(["index", "bytes"], 5), "bytes, manifest.json says 5 (truncated or replaced"),
    "index checksum": (_set(["index", "sha256"], "0" * 64), "differs from manifest.json's 000000000000... (corrupt"),
    "name leaves the folder": (_set(["shards", 0, "name"], "../../etc/passwd"), "is not a file name beside"),
    "unknown split": (_set(["shards", 0, "split"], "holdout"), "shards[0].split 'holdout' is none of"),
    "sha256 a number": (_set(["shards", 0, "sha256"], 5), "shards[0].sha256 is the integer 5"),
    "bytes negative": (_set(["shards", 0, "bytes"], -5), "shards[0].bytes is -5"),
    "settings a string": (_set(["settings"], "x"), "settings is the string 'x'"),
}


@pytest.fixture(scope="module")
def good_shards(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("good")
    assert run(corpus(base / "midi", per_style=2), base / "out") == 0
    return base / "out"


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_a_malformed_manifest_is_refused_naming_file_and_key(good_shards, tmp_path, case):
    edit, words = BAD_MANIFESTS[case]
    raw = json.loads((good_shards / "manifest.json").read_text())
    edit(raw)
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    shutil.copy(good_shards / "pieces.npy", tmp_path)
    with pytest.raises(ShardError) as err:
        Manifest.load(tmp_path)
    assert str(tmp_path) in str(err.value) and words in str(err.value), str(err.value)


BAD_RECORDS = {  # field of record 0 -> (value, words of the message)
    "steps": (10**9, "record 0 (train-000000.tar) has steps 1000000000 (at most 16777216)"),
    "style": (7, "style 7 (of 2)"),
    "offset": (10**9, "bytes [1000000000, "),
}


@pytest.mark.parametrize("field", sorted(BAD_RECORDS))
def test_a_piece_index_out_of_range_is_refused_naming_the_record(good_shards, tmp_path, field):
    """A record that the manifest's sha256 vouches for but that is out of range (a writer bug or a hand-made index):
    refused at load, naming the record and its shard, before any loader sizes an array from it."""
    value, words = BAD_RECORDS[field]
    rec = np.load(good_shards / "pieces.npy").copy()
    rec[field][0] = value
    np.save(tmp_path / "pieces.npy", rec)
    raw = json.loads((good_shards / "manifest.json").read_text())
    data = (tmp_path / "pieces.npy").read_bytes()
    raw["index"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ShardError) as err:
        Manifest.load(tmp_path)
    assert str(tmp_path / "pieces.npy") in str(err.value) and words in str(err.value), str(err.value)


def test_a_duplicated_shard_entry_is_refused(good_shards, tmp_path):
    raw = json.loads((good_shards / "manifest.json").read_text())
    raw["shards"].append(raw["shards"][0])
    raw["totals"]["train"] = {}
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ShardError, match="shard train-000000.tar is listed twice"):
        Manifest.load(tmp_path)


# --------------------------------------------------------------------------------------------------- 12: output paths

def test_an_output_path_that_is_a_file_exits_2(tmp_path, capsys):
    src = corpus(tmp_path / "midi", per_style=1)
    (tmp_path / "out").write_text("not a folder")
    assert run(src, tmp_path / "out") == 2
    assert f"{tmp_path / 'out'} is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "not a folder"


def test_an_unreachable_output_path_exits_2(tmp_path, capsys):
    src = corpus(tmp_path / "midi", per_style=1)
    (tmp_path / "file").write_text("x")
    assert run(src, tmp_path / "file" / "out") == 2
    err = capsys.readouterr().err
    assert f"cannot create the output folder {tmp_path / 'file' / 'out'}: Not a directory" in err


def test_a_read_only_output_folder_exits_2(tmp_path, capsys):
    src = corpus(tmp_path / "midi", per_style=1)
    if os.geteuid() != 0:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o555)
    else:  # root writes through file modes: a sysfs folder is read-only even for root
        out = Path("/sys/kernel")
        try:
            os.close(os.open(out / ".lock", os.O_CREAT | os.O_RDWR, 0o644))
            pytest.skip("no folder here is read-only for root")
        except OSError:
            pass
    try:
        assert run(src, out) == 2
    finally:
        if os.geteuid() != 0:
            out.chmod(0o755)
    assert f"cannot write to the output folder {out} (Permission denied)" in capsys.readouterr().err


def test_merge_into_a_file_exits_2(tmp_path, capsys):
    src, work = corpus(tmp_path / "midi", per_style=1), tmp_path / "work"
    assert preprocess_merge.run_slice(str(src), work, index=0, count=1, list_file=None,
                                      preprocess_args=["--workers", "1", "--min-steps", "16"]) == 0
    (tmp_path / "out").write_text("x")
    capsys.readouterr()
    assert preprocess_merge.main(["merge", str(work), str(tmp_path / "out")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
