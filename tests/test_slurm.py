"""Slurm: slicing and merging preprocessed corpora (fast, no Slurm), and on a real one-node Slurm
(tests/slurm_cluster.py, marked slurm and slow): a training job preempted with USR2 checkpoints, requeues itself and
resumes to the end, for torchrun and for the DeepSpeed launcher; an array job preprocesses slices and its dependent
step merges them.

The Slurm tests skip where they cannot run (not root, no apt-get, no package mirror); with CI=true they fail instead.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_tiny_corpus, write_random_piece
from slurm_cluster import SlurmCluster, SlurmClusterError, ensure_installed, unavailable_reason
from test_corpus import MAESTRO_CSV, write_piece

from deepj import preprocess
from deepj.data.loader import DataConfig, StreamingLoader
from deepj.data.manifest import Manifest
from deepj.data.shards import sha256_file
from deepj.preprocess_merge import MergeError, merge, rewrite_shard, run_slice

PRE = ["--workers", "1", "--val-fraction", "0.2", "--min-steps", "16"]


def samples(shard_dir: Path) -> list[dict]:
    """Every sample's json, with the manifest's view of it: (shard, position, piece_styles entry, split)."""
    m = Manifest.load(shard_dir)
    out = []
    first = m.shard_first_piece()
    for i, entry in enumerate(m.shards):
        with tarfile.open(shard_dir / entry.name) as tar:
            metas = [json.loads(tar.extractfile(x).read()) for x in tar.getmembers() if x.name.endswith(".json")]
        assert len(metas) == entry.pieces
        for k, meta in enumerate(metas):
            out.append({**meta, "split": entry.split, "manifest_style": int(m.pieces.styles[first[i] + k]),
                        "style_name": m.styles.styles[meta["style_id"]]})
    return out


def one_epoch(shard_dir: Path) -> int:
    """Windows the loader yields over a train epoch, checking every shard's sha256 and every json style_id."""
    cfg = DataConfig(dir=str(shard_dir), seq_len=32, stride=16, workers=0)
    loader = StreamingLoader(cfg, "train", micro_batch=2, global_batch=2)
    return sum(len(b["window"]) for b in loader)


# ------------------------------------------------------------------------------------------------------------ merge

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny corpus plus a style that sorts first and lives in one slice only (so the others' ids shift), and the
    shards of one whole preprocess run over it."""
    base = tmp_path_factory.mktemp("slices")
    midi = make_tiny_corpus(base / "midi")
    write_random_piece(midi / "aaa" / "early" / "one.mid", np.random.default_rng(5), 6, 50, 70)
    whole = base / "whole"
    assert preprocess.main([str(midi), str(whole), *PRE]) == 0
    return midi, whole


def test_merged_slices_hold_the_whole_run_with_remapped_style_ids(corpus, tmp_path):
    midi, whole = corpus
    work, out = tmp_path / "work", tmp_path / "merged"
    for i in range(3):
        assert run_slice(str(midi), work, index=i, count=3, list_file=None, preprocess_args=PRE) == 0
    vocab = [Manifest.load(work / f"slice-000{i}" / "shards").styles.styles for i in range(3)]
    assert vocab[0] != vocab[1]  # the slices number their styles differently
    m = merge(work, out)
    ref = Manifest.load(whole)
    assert m.styles == ref.styles  # leaves, levels and level names
    assert Manifest.load(out) == m  # what merge returns is what it wrote
    assert [e.name for e in m.shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar",
                                          "val-000000.tar", "val-000001.tar", "val-000002.tar"]
    got, want = samples(out), samples(whole)
    # every sample's json agrees with the merged manifest, and names the style it was written with
    assert all(s["style_id"] == s["manifest_style"] and s["style_name"] == s["style"] for s in got)
    key = lambda s: (s["source"], s["style"], s["steps"], s["notes"])  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, want))
    # splits: each piece keeps its hash split, except that a slice without a val piece moves its smallest-hash one
    moved = {s["source"] for s in got if s["split"] == "val"} - {s["source"] for s in want if s["split"] == "val"}
    assert {s["source"] for s in want if s["split"] == "val"} <= {s["source"] for s in got if s["split"] == "val"}
    assert len(moved) <= 3
    for split in ("train", "val"):
        assert m.totals[split]["pieces"] == sum(1 for s in got if s["split"] == split)
    assert m.totals["files_seen"] == ref.totals["files_seen"] == 19
    assert m.settings == ref.settings  # input is the original folder, not a slice's
    report = json.loads((out / "report.json").read_text())
    assert report["merged"]["shards_rewritten"] >= 2 and len(report["merged"]["slices"]) == 3
    assert report["pieces_per_style"] == json.loads((whole / "report.json").read_text())["pieces_per_style"]
    # the loader reads the merged folder: sizes, sha256 and json style ids all check out
    assert one_epoch(out) == StreamingLoader(DataConfig(dir=str(out), seq_len=32, stride=16), "train",
                                             micro_batch=2, global_batch=2).steps_per_epoch() * 2
    # merging again into the same folder gives the same manifest (idempotent), hard links or not
    assert merge(work, out) == m


def test_slices_write_a_piece_found_twice_once(corpus, tmp_path):
    """The same notes under names that fall into different slices: the merge keeps the first in source order, as
    one preprocess run would, rewrites the other's shard without it and lists it as a duplicate."""
    midi, _ = corpus
    src = tmp_path / "midi"
    shutil.copytree(midi, src)
    original = sorted(src.rglob("*.mid"))[0]
    copies = [original.with_name("zz-copy-a.mid"), original.parent.parent / "zz-copy-b.mid"]
    for c in copies:
        shutil.copy(original, c)
    whole = tmp_path / "whole"
    assert preprocess.main([str(src), str(whole), *PRE]) == 0
    work, out = tmp_path / "work", tmp_path / "merged"
    for i in range(3):
        assert run_slice(str(src), work, index=i, count=3, list_file=None, preprocess_args=PRE) == 0
    m = merge(work, out)
    key = lambda s: (s["source"], s["style"], s["steps"], s["notes"])  # noqa: E731
    assert sorted(map(key, samples(out))) == sorted(map(key, samples(whole)))
    report, ref = (json.loads((d / "report.json").read_text()) for d in (out, whole))
    dups = lambda r: sorted((x["file"], x["detail"]) for x in r["skipped"] if x["reason"] == "duplicate")  # noqa: E731
    assert dups(report) == dups(ref) and len(dups(ref)) == 2
    assert report["merged"]["duplicates_across_slices"] >= 1
    assert report["counts"] == ref["counts"]
    assert m.totals["files_skipped"] == Manifest.load(whole).totals["files_skipped"]
    assert len(m.pieces) == len(Manifest.load(whole).pieces) == report["pieces_written"]
    assert one_epoch(out) > 0


def test_identity_rewrite_reproduces_the_shard_bytes(corpus, tmp_path):
    _, whole = corpus
    src = whole / "train-000000.tar"
    n = Manifest.load(whole).styles.num_styles
    same, rec = rewrite_shard(src, tmp_path, "same.tar", "train", list(range(n)))
    assert same.sha256 == sha256_file(src) == sha256_file(tmp_path / "same.tar")
    assert np.array_equal(rec, Manifest.load(whole).pieces.records(np.arange(same.pieces)))
    shifted, rec = rewrite_shard(src, tmp_path, "shifted.tar", "train", [k + 1 for k in range(n)])
    assert shifted.sha256 != same.sha256 and (rec["style"] >= 1).all()


def test_merge_refuses_unfinished_or_mismatched_slices(corpus, tmp_path):
    midi, _ = corpus
    work = tmp_path / "work"
    for i in range(2):
        assert run_slice(str(midi), work, index=i, count=2, list_file=None, preprocess_args=PRE) == 0
    (work / "slice-0001" / "DONE").unlink()
    with pytest.raises(MergeError, match="slice-0001 has no DONE"):
        merge(work, tmp_path / "out")
    assert run_slice(str(midi), work, index=1, count=2, list_file=None,
                     preprocess_args=[*PRE[:-1], "24", "--force"]) == 0  # another --min-steps
    with pytest.raises(MergeError, match="other settings.*min_steps"):
        merge(work, tmp_path / "out")
    with pytest.raises(MergeError, match="cut with --count 2"):
        run_slice(str(midi), work, index=1, count=3, list_file=None, preprocess_args=PRE)
    shutil.rmtree(work / "slice-0001")
    with pytest.raises(MergeError, match=r"slices \[1\] of 2 are missing"):
        merge(work, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_csv_slices_keep_official_splits_and_count_every_row(tmp_path):
    root = tmp_path / "maestro"
    root.mkdir()
    csv_path = root / "maestro-v3.0.0.csv"
    shutil.copy(MAESTRO_CSV, csv_path)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    picks = [next(r for r in rows if r["split"] == sp and r["canonical_composer"] == c)
             for sp, c in [("train", "Frédéric Chopin"), ("train", "Johann Sebastian Bach"),
                           ("validation", "Frédéric Chopin"), ("test", "Joseph Haydn"), ("test", "Franz Liszt")]]
    for k, row in enumerate(picks):
        write_piece(root / row["midi_filename"], steps=64, seed=k)
    work = tmp_path / "work"
    for i in range(4):
        assert run_slice(str(csv_path), work, index=i, count=4, list_file=None,
                         preprocess_args=["--workers", "1"]) == 0
    m = merge(work, tmp_path / "out")
    assert preprocess.main([str(csv_path), str(tmp_path / "whole"), "--workers", "1"]) == 0
    ref = Manifest.load(tmp_path / "whole")
    assert m.styles.styles == ref.styles.styles
    for split in ("train", "val", "test"):
        assert m.totals[split]["pieces"] == ref.totals[split]["pieces"]
    assert m.totals["files_seen"] == ref.totals["files_seen"] == len(rows)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"] == {"missing": len(rows) - len(picks)} and report["source"] == "maestro"


# ------------------------------------------------------------------------------------------------------------ Slurm

def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"the Slurm tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm():
    reason = unavailable_reason()
    if reason:
        _unavailable(reason)
    try:
        ensure_installed()
    except (SlurmClusterError, OSError, subprocess.TimeoutExpired) as e:
        _unavailable(f"could not install slurm-wlm/munge: {e}")
    base = Path(tempfile.mkdtemp(prefix="deepj-slurm-", dir="/tmp"))  # short: munge's socket path is limited
    cluster = SlurmCluster(base)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def wait_for(what: str, predicate, timeout: float, cluster: SlurmCluster, log: Path | None = None, every=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    tail = log.read_text()[-4000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\njob log:\n{tail}\n{cluster.logs()}")


def state(cluster: SlurmCluster, job: int) -> str:
    return cluster.job(job).get("JobState", "")


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "deepspeed"])
def test_preempted_job_checkpoints_requeues_and_resumes(slurm, tiny_shards, tmp_path, backend):
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    max_steps = 50  # the signal comes at step ~10-15; the rest shows the resumed run going on to the end
    extra = ["train.deepspeed_config=launcher/ds_zero0.json"] if backend == "deepspeed" else []
    # Submitted the way a user would: `deepj.launch run --slurm` composes the sbatch line (2 CPU processes per node).
    res = subprocess.run([sys.executable, "-m", "deepj.launch", "run", "--slurm", "--cpu", "--backend", backend,
                          "--gpus-per-node", "2", "--job-name", "deepj-test", "--log-dir", str(logs),
                          "--config", "configs/debug.toml", f"data.dir={tiny_shards}", f"run.dir={run_dir}",
                          f"train.max_steps={max_steps}", "checkpoint.every=10", "log.sample_every=0",
                          "train.val_every=0", *extra], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**slurm.env, "DEEPJ_PYTHON": sys.executable})
    assert res.returncode == 0, res.stdout + res.stderr
    job = int(re.search(r"Submitted batch job (\d+)", res.stdout).group(1))
    log = logs / f"deepj-test-{job}.out"

    def first_checkpoint():
        if state(slurm, job) in ("FAILED", "CANCELLED", "COMPLETED", "TIMEOUT"):
            raise AssertionError(f"job {job} ended before its first checkpoint:\n{log.read_text()[-4000:]}")
        return any(run_dir.glob("step-*/COMPLETE"))

    wait_for("the first checkpoint", first_checkpoint, 240, slurm, log)
    slurm.run("scancel", "--signal=USR2", "--batch", str(job))
    wait_for("the requeue", lambda: slurm.job(job).get("Restarts") == "1" and state(slurm, job) == "PENDING",
             120, slurm, log)
    # Released at once (else eligible only ~2 minutes later), but not in the second of the requeue: slurmd revokes
    # the old run's credential with one-second resolution and refuses a relaunch in that second ("Killing
    # non-startable batch JobId=N: Job credential revoked"; the job then ends FAILED). Seen here.
    time.sleep(2)
    slurm.run("scontrol", "update", f"jobid={job}", "StartTime=now")
    wait_for("the requeued job to finish", lambda: state(slurm, job) in ("COMPLETED", "FAILED", "CANCELLED"),
             240, slurm, log)

    text = log.read_text()
    info = slurm.job(job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "1", (
        f"{info}\n{text[-3000:]}\n{slurm.logs()}")
    assert f"job {job} restart 0 " in text and f"job {job} restart 1 " in text  # SLURM_RESTART_COUNT=1 the 2nd time
    assert "batch shell got SIGUSR2: forwarding USR2 to the training step" in text
    saved = int(re.search(r"preempted \(SIGUSR2\): saved step (\d+), exiting 75", text).group(1))
    assert 10 <= saved < max_steps
    if backend == "deepspeed":
        assert "training step exited with 75" in text  # DeepSpeed's launcher passes the trainer's status on
    assert f"requeueing job {job}" in text
    assert f"resumed from {run_dir}/step-{saved:08d} at step {saved} (saved by 2 rank(s), now 2)" in text
    assert f"done: {max_steps} steps" in text
    assert text.index("requeueing job") < text.index("resumed from") < text.index("done:")
    assert (run_dir / f"step-{max_steps:08d}" / "COMPLETE").is_file()
    st = subprocess.run([sys.executable, "-m", "deepj.launch", "status", str(run_dir)], capture_output=True, text=True)
    assert st.returncode == 0 and f"step {max_steps} of {max_steps}" in st.stdout


@pytest.mark.slurm
@pytest.mark.slow
def test_deepspeed_wrapper_on_several_slurm_nodes_writes_its_hostfile(slurm, tmp_path):
    """launcher/deepspeed.sh's Slurm branch (no ssh: one launcher per node), with the real scontrol's hostlist."""
    rec = tmp_path / "record-argv"
    rec.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                   "open(os.environ['ARGV_OUT'], 'w').write(json.dumps(sys.argv[1:]))\n")
    rec.chmod(0o755)
    env = {**{k: v for k, v in slurm.env.items() if not k.startswith(("SLURM_", "DEEPJ_"))},
           "SLURM_CONF": slurm.env["SLURM_CONF"], "SLURM_JOB_ID": "42", "SLURM_NODEID": "1", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "DEEPJ_NPROC_PER_NODE": "4", "DEEPJ_RDZV_PORT": "31000",
           "DEEPJ_PYTHON": str(rec), "ARGV_OUT": str(tmp_path / "argv.json"), "TMPDIR": str(tmp_path)}
    res = subprocess.run(["bash", str(REPO / "launcher/deepspeed.sh"), "--config", "configs/paper.toml"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    hostfile = tmp_path / "deepj-hostfile.42.1"
    assert hostfile.read_text() == "gpu07 slots=4\ngpu08 slots=4\n"
    assert json.loads((tmp_path / "argv.json").read_text()) == [
        "-m", "deepspeed.launcher.runner", f"--hostfile={hostfile}", "--no_ssh", "--node_rank=1", "--num_nodes=2",
        "--num_gpus=4", "--master_addr=gpu07", "--master_port=31000", "--no_local_rank", "--module", "deepj.train",
        "--config", "configs/paper.toml", "train.backend=deepspeed"]


@pytest.mark.slurm
@pytest.mark.slow
def test_preprocess_array_job_and_its_merge_step(slurm, corpus, tmp_path):
    midi, whole = corpus
    out, logs = tmp_path / "shards", tmp_path / "logs"
    logs.mkdir()
    job = slurm.sbatch("--array=0-2", "--cpus-per-task=1", f"--output={logs}/%x-%A_%a.out",
                       f"--export=ALL,DEEPJ_PYTHON={sys.executable}", "slurm/preprocess.sbatch", str(midi), str(out),
                       "--val-fraction", "0.2", "--min-steps", "16", cwd=REPO)
    def merge_job_id():  # the first array task to start submits the merge and says so in its log
        found = [re.search(r"submitted the merge as job (\d+)", p.read_text()) for p in logs.glob("*_*.out")]
        return next((int(f.group(1)) for f in found if f), None)

    merge_job = wait_for("the merge job's id", merge_job_id, 60, slurm)
    wait_for("the merge", lambda: state(slurm, merge_job) in ("COMPLETED", "FAILED", "CANCELLED"), 120, slurm)
    merge_log = next(logs.glob(f"*-merge-{merge_job}.out"))
    assert state(slurm, merge_job) == "COMPLETED", merge_log.read_text()
    tasks = slurm.jobs(job)
    assert len(tasks) == 3 and all(t["JobState"] == "COMPLETED" for t in tasks)
    assert "merged into" in merge_log.read_text()
    got, want = samples(out), samples(whole)
    assert Manifest.load(out).styles.styles == Manifest.load(whole).styles.styles
    assert all(s["style_id"] == s["manifest_style"] and s["style_name"] == s["style"] for s in got)
    assert sorted(s["source"] for s in got) == sorted(s["source"] for s in want)
    assert one_epoch(out) > 0
    assert not (tmp_path / "shards.slices").exists()  # removed after the merge (DEEPJ_KEEP_SLICES=1 keeps them)
