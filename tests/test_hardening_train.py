"""Training under bad input and rough handling: non-finite steps, two trainings on one run folder, a resume with a new
learning rate, a corrupted checkpoint, Ctrl-C and a killed launcher, and inputs refused at start. Real entry (one
process or torchrun), gloo, CPU."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from conftest import REPO, run_cli
from test_fault_tolerance import wait_for
from test_train import free_port, read_tb, torchrun

from deepj.data.manifest import Manifest, PieceTable

# A debug run without samples (speed), validation off unless a test turns it on.
BASE = ("--config", "configs/debug.toml", "log.sample_every=0", "train.val_every=0")


def train(shards: Path, run: Path, *extra: str, env: dict | None = None):
    return run_cli("-m", "deepj.train", *BASE, f"data.dir={shards}", f"run.dir={run}", *extra, timeout=300,
                   env_extra=env)


def output(res) -> str:
    return res.stdout + res.stderr


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """A process in its own session (a signal sent to it reaches it alone), its output in a file: a long run never
    blocks on a full pipe while the test waits for something else."""
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


def start_train(shards: Path, run: Path, log: Path, *extra: str) -> subprocess.Popen:
    return start([sys.executable, "-m", "deepj.train", *BASE, f"data.dir={shards}", f"run.dir={run}", *extra], log)


def start_torchrun(shards: Path, run: Path, log: Path, *extra: str) -> subprocess.Popen:
    return start([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                  "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "-m", "deepj.train", *BASE,
                  f"data.dir={shards}", f"run.dir={run}", *extra], log)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 180) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        raise AssertionError(f"still running after {timeout} s:\n{log.read_text()[-3000:]}") from None
    return log.read_text()


def kill_tree(pid: int) -> None:
    try:
        family = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        family = [pid]
    for p in family:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def rank_pids(launcher: subprocess.Popen, ranks: int = 2, timeout: float = 30) -> dict[int, int]:
    """rank -> pid of torchrun's training processes."""
    t0, found = time.time(), {}
    while len(found) < ranks and time.time() - t0 < timeout:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if "deepj.train" in " ".join(child.cmdline()) and "RANK" in child.environ():
                    found[int(child.environ()["RANK"])] = child.pid
            except psutil.Error:
                continue
        time.sleep(0.1)
    assert len(found) == ranks, found
    return found


def alive(pid: int) -> bool:
    """Running (a zombie has ended: only its exit status waits for a parent that may never reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def newest_step(run: Path) -> int:
    return int((run / "latest").read_text().strip().split("-")[1])


def step_names(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("step-"))


# -- 2. non-finite loss or gradient ----------------------------------------------------------------------------------
def test_nonfinite_loss_stops_without_saving_and_keeps_the_last_good_checkpoint(tiny_shards, tmp_path):
    """optim.lr=1e36 without clipping: step 1 is finite and saved, its update makes step 2's play loss inf. The run
    stops before applying step 2, saves nothing of it, keeps step 1 (checkpoint.keep=1 must not rotate it away), says
    which step and term and the usual causes, and exits 3."""
    from deepj.training.checkpoint import load_model

    run = tmp_path / "run"
    res = train(tiny_shards, run, "optim.lr=1e36", "optim.grad_clip=0", "optim.warmup_steps=0", "checkpoint.every=1",
                "checkpoint.keep=1", "train.max_steps=6")
    assert res.returncode == 3, output(res)[-3000:]
    out = res.stdout
    assert "non-finite at step 2" in out and "play inf" in out, out[-2000:]
    assert "optim.lr=1e+36" in out and "fp16" in out and "corrupt data" in out and "Exiting 3" in out
    assert step_names(run) == ["step-00000001"]  # nothing of step 2, not even a .tmp
    assert (run / "latest").read_text().strip() == "step-00000001"
    model, meta, _ = load_model(run)
    assert meta.step == 1 and all(torch.isfinite(p).all() for p in model.parameters())


def test_weights_that_overflow_in_the_update_are_never_saved(tiny_shards, tmp_path):
    """Finite loss and gradient, but AdamW's decay factor 1 - lr x weight_decay overflows every weight: the save of
    step 1 checks the weights first and refuses; exit 3, no checkpoint."""
    run = tmp_path / "run"
    res = train(tiny_shards, run, "optim.name=adamw", "optim.lr=1e30", "optim.weight_decay=1e10",
                "optim.warmup_steps=0", "checkpoint.every=1", "train.max_steps=4")
    assert res.returncode == 3, output(res)[-3000:]
    assert "non-finite at step 1: weights after the update" in res.stdout and "without saving it" in res.stdout
    assert step_names(run) == [] and not (run / "latest").exists()


@pytest.mark.slow
def test_nonfinite_batch_on_one_rank_stops_every_rank(tiny_shards, tmp_path):
    """A NaN batch on rank 1 only (the DEEPJ_FAULT hook) at step 3: both ranks agree in the step's collective, neither
    applies or saves step 3, both exit 3; rank 1 names the micro-batch and its windows."""
    run = tmp_path / "run"
    res = torchrun(*BASE, f"data.dir={tiny_shards}", f"run.dir={run}", "checkpoint.every=2", "train.max_steps=8",
                   timeout=300, env={"DEEPJ_FAULT": "nan-batch:3:1"})
    out = output(res)
    assert res.returncode != 0, out[-3000:]
    assert "rank 1: non-finite at step 3: micro-batch 0: loss nan" in out, out[-3000:]
    assert "stopping at step 3" in out and "step-00000002" in out
    assert out.count("exitcode") >= 1 and "exitcode  : 3" in out, out[-3000:]
    assert step_names(run) == ["step-00000002"]


# -- 3. one training per run folder ---------------------------------------------------------------------------------
def test_second_training_on_a_busy_run_dir_is_refused_and_kill_9_leaves_no_stale_lock(tiny_shards, tmp_path):
    run, log = tmp_path / "run", tmp_path / "first.log"
    first = start_train(tiny_shards, run, log, "train.max_steps=100000", "checkpoint.every=4")
    try:
        wait_for(run / "step-00000004", first, log=log)
        res = train(tiny_shards, run, "train.max_steps=8")
        assert res.returncode == 2, output(res)[-3000:]
        assert f"pid {first.pid} on {socket.gethostname()}" in res.stdout and "in use by another training" in res.stdout
        assert "Traceback" not in res.stderr
    finally:
        kill_tree(first.pid)
        first.wait(timeout=60)
    step = newest_step(run)
    res = train(tiny_shards, run, f"train.max_steps={step + 1}")  # the kernel dropped the killed run's lock
    assert res.returncode == 0, output(res)[-3000:]
    assert f"at step {step}" in res.stdout


@pytest.mark.slow
def test_busy_run_dir_under_torchrun_every_rank_exits_2(tiny_shards, tmp_path):
    """Rank 0 finds the lock held; every rank stops with exit 2 at start, nothing hangs and nothing is written."""
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"pid 4242 on elsewhere since 2000-01-01 00:00:00\n")
        res = torchrun(*BASE, f"data.dir={tiny_shards}", f"run.dir={run}", "train.max_steps=4", timeout=300)
    finally:
        os.close(fd)
    out = output(res)
    assert res.returncode != 0
    assert "run.dir error" in out and "pid 4242 on elsewhere" in out, out[-3000:]
    assert out.count("exitcode  : 2") == 2, out[-3000:]  # torchrun's summary: both ranks exited 2
    assert "deepj/" not in out  # torchrun prints its own traceback (ChildFailedError), none comes from deepj
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


# -- 6. the config's optimizer hyperparameters win on resume ---------------------------------------------------------
def test_resume_with_a_new_learning_rate_uses_it(trained_run, tiny_shards, tmp_path):
    """trained_run: 4 steps at optim.lr 0.002 (constant after 5 warm-up steps). Resumed with lr 0.0005, a cosine
    schedule and new betas, eps and weight decay, the logged lr and the optimizer's groups follow the config from
    step 5 on."""
    from deepj.training.optim import OptimConfig, lr_factor

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    new = ("optim.lr=0.0005", "optim.schedule=cosine", "optim.min_lr_ratio=0.5", "optim.beta1=0.8", "optim.eps=1e-6",
           "optim.weight_decay=0.01")
    res = train(tiny_shards, run, *new, "train.max_steps=7", "log.every=1", "checkpoint.every=7")
    assert res.returncode == 0, output(res)[-3000:]
    assert "resume: optim.lr changed: 0.002 -> 0.0005" in res.stdout
    assert "learning rate of step 5 follows the config: 0.002 -> 0.0005" in res.stdout, res.stdout[-2000:]
    cfg = OptimConfig(lr=0.0005, warmup_steps=5, schedule="cosine", min_lr_ratio=0.5)
    logged = {e.step: e.value for e in read_tb(run).Scalars("train/lr")}
    for step in (5, 6, 7):  # the lr logged at a step is the next step's: step index `step`
        assert logged[step] == pytest.approx(0.0005 * lr_factor(step, cfg, 7), rel=1e-6), logged
    assert logged[7] == pytest.approx(0.00025, rel=1e-6)  # cosine down to min_lr_ratio x the new lr
    state = torch.load(run / "step-00000007" / "train.pt", weights_only=True)["engine"]
    group = state["optimizer"]["param_groups"][0]
    assert (group["initial_lr"], tuple(group["betas"]), group["eps"], group["weight_decay"]) == (0.0005, (0.8, 0.999),
                                                                                               1e-6, 0.01)
    assert state["scheduler"]["base_lrs"] == [0.0005]


def test_resume_with_another_optimizer_is_refused(trained_run, tiny_shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    res = train(tiny_shards, run, "optim.name=adamw", "train.max_steps=6")
    assert res.returncode == 2, output(res)[-3000:]
    assert "optim.name=nadam" in res.stdout and "Traceback" not in res.stderr
    assert 'name = "nadam"' in (run / "config.toml").read_text()  # refused before config.toml was rewritten


# -- 7. checkpoint checksums ------------------------------------------------------------------------------------------
def test_flipped_byte_in_newest_checkpoint_falls_back_to_the_previous(tiny_shards, tmp_path):
    run = tmp_path / "run"
    assert train(tiny_shards, run, "train.max_steps=4", "checkpoint.every=2").returncode == 0
    marker = json.loads((run / "step-00000004" / "COMPLETE").read_text())
    assert set(marker["sha256"]) == set(marker["files"])
    pt = run / "step-00000004" / "train.pt"
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: the size check alone passes it
    pt.write_bytes(bytes(data))
    res = train(tiny_shards, run, "train.max_steps=5")
    assert res.returncode == 0, output(res)[-3000:]
    assert f"skipping {run / 'step-00000004'}: train.pt has sha256" in res.stdout, res.stdout[-2000:]
    assert f"resumed from {run / 'step-00000002'} at step 2" in res.stdout

    # A checkpoint written before checksums (a COMPLETE with sizes only) still resumes.
    ckpt = run / "step-00000005"
    marker = json.loads((ckpt / "COMPLETE").read_text())
    del marker["sha256"]
    (ckpt / "COMPLETE").write_text(json.dumps(marker))
    res = train(tiny_shards, run, "train.max_steps=6")
    assert res.returncode == 0 and f"resumed from {ckpt} at step 5" in res.stdout, output(res)[-3000:]


# -- 8. Ctrl-C, and a launcher that is gone ---------------------------------------------------------------------------
def test_sigint_saves_exits_75_and_resumes(tiny_shards, tmp_path):
    run, log = tmp_path / "run", tmp_path / "train.log"
    proc = start_train(tiny_shards, run, log, "train.max_steps=100000", "checkpoint.every=4")
    wait_for(run / "step-00000004", proc, log=log)
    os.kill(proc.pid, signal.SIGINT)
    out = finish(proc, log)
    assert proc.returncode == 75, out[-3000:]
    assert "preempted (SIGINT)" in out and "Ctrl-C again" in out
    step = newest_step(run)
    assert step > 4 and (run / f"step-{step:08d}" / "COMPLETE").is_file()
    res = train(tiny_shards, run, f"train.max_steps={step + 2}")
    assert res.returncode == 0 and f"at step {step}" in res.stdout, output(res)[-3000:]


@pytest.fixture
def own_signals():
    """The stop signals' handlers as they were before the test, restored after it (StopFlag installs its own)."""
    from deepj.training.preempt import SIGNALS

    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_second_sigint_aborts_at_once(own_signals):
    """The first SIGINT only sets the flag; the second raises KeyboardInterrupt wherever the main thread is."""
    from deepj.training.preempt import StopFlag

    # What SIGINT would do if StopFlag left it alone (a failure of this test, not pytest's KeyboardInterrupt).
    signal.signal(signal.SIGINT, lambda *_: pytest.fail("StopFlag does not handle SIGINT"))
    flag = StopFlag()
    signal.raise_signal(signal.SIGINT)
    assert flag.local and flag.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_sighup_is_a_stop_unless_inherited_ignored(own_signals):
    """SIGHUP (the terminal went away; torchrun forwards it) saves like SIGTERM instead of killing the trainer; under
    nohup (SIGHUP ignored from the start) it stays ignored, so the run outlives the shell."""
    from deepj.training.preempt import StopFlag

    signal.signal(signal.SIGHUP, lambda *_: pytest.fail("StopFlag does not handle SIGHUP"))
    flag = StopFlag()
    signal.raise_signal(signal.SIGHUP)
    assert flag.local and flag.signal_name == "SIGHUP"
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
    flag = StopFlag()
    signal.raise_signal(signal.SIGHUP)
    assert not flag.local and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_launcher_gone_is_a_stop(monkeypatch):
    """A changed parent pid (the launcher died, the rank was re-parented) is a stop request, like SIGTERM; without a
    launcher to watch (a plain `python -m deepj.train`, maybe under nohup) the parent is not watched."""
    from deepj.training import preempt

    saved = {sig: signal.getsignal(sig) for sig in preempt.SIGNALS}
    try:
        monkeypatch.setenv("LOCAL_RANK", "0")
        assert preempt.launcher_pid() == os.getppid()
        flag = preempt.StopFlag(parent=os.getppid() + 1)  # as if our launcher had another pid
        assert flag.agree() == [] and flag.requested and "is gone" in flag.signal_name
        monkeypatch.delenv("LOCAL_RANK")
        assert preempt.launcher_pid() is None
        flag = preempt.StopFlag(parent=preempt.launcher_pid())
        flag.agree()
        assert not flag.requested
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.mark.slow
def test_sigint_to_torchrun_saves_every_rank_at_the_same_step(tiny_shards, tmp_path):
    """torchrun forwards SIGINT to its workers: both save the same step, exit 75, and the run resumes."""
    run, log = tmp_path / "run", tmp_path / "torchrun.log"
    proc = start_torchrun(tiny_shards, run, log, "train.max_steps=100000", "checkpoint.every=4")
    try:
        wait_for(run / "step-00000004", proc, log=log)
        rank_pids(proc)  # the workers are up
        os.kill(proc.pid, signal.SIGINT)
        out = finish(proc, log)
    finally:
        kill_tree(proc.pid)
    assert "preempted (SIGINT)" in out, out[-3000:]
    step = newest_step(run)
    assert step > 4
    files = {p.name for p in (run / f"step-{step:08d}").iterdir()}
    assert {"rank-00000.pt", "rank-00001.pt", "train.pt", "COMPLETE"} <= files
    res = torchrun(*BASE, f"data.dir={tiny_shards}", f"run.dir={run}", f"train.max_steps={step + 2}", timeout=300)
    assert res.returncode == 0 and f"at step {step}" in res.stdout, output(res)[-3000:]


@pytest.mark.slow
def test_sigkill_of_torchrun_leaves_no_rank_training(tiny_shards, tmp_path):
    """torchrun SIGKILLed: nobody will ever forward a signal to its workers. Each notices its parent is gone, they
    save the same step and exit; no deepj.train process is left after a bounded wait; the run resumes."""
    run, log = tmp_path / "run", tmp_path / "torchrun.log"
    proc = start_torchrun(tiny_shards, run, log, "train.max_steps=100000", "checkpoint.every=4")
    pids: dict[int, int] = {}
    try:
        wait_for(run / "step-00000004", proc, log=log)
        pids = rank_pids(proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 90
        while any(alive(p) for p in pids.values()) and time.time() < deadline:
            time.sleep(0.2)
        left = [p for p in pids.values() if alive(p)]
        assert not left, f"ranks {left} still running 90 s after torchrun was killed:\n{log.read_text()[-3000:]}"
    finally:
        for p in pids.values():
            if alive(p):
                os.kill(p, signal.SIGKILL)
    out = log.read_text()
    assert "is gone" in out and "exiting 75" in out, "no agreed save after torchrun died:\n" + out[-6000:]
    step = newest_step(run)
    assert step > 4
    assert {"rank-00000.pt", "rank-00001.pt"} <= {p.name for p in (run / f"step-{step:08d}").iterdir()}
    res = torchrun(*BASE, f"data.dir={tiny_shards}", f"run.dir={run}", f"train.max_steps={step + 2}", timeout=300)
    assert res.returncode == 0 and f"at step {step}" in res.stdout, \
        f"the resume from step {step} failed ({res.returncode}):\n" + output(res)[-6000:]


# -- 12. refused at start, or ended with a sentence --------------------------------------------------------------------
@pytest.mark.parametrize("extra, key", [
    (("train.precision=fp16",), "train.precision=fp16"),
    (("checkpoint.resume=/nonexistent/step-00000004",), "checkpoint.resume=/nonexistent/step-00000004"),
    (("train.backend=deepspeed", "train.deepspeed_config=/nonexistent/ds.json"),
     "train.deepspeed_config=/nonexistent/ds.json"),
])
def test_refused_at_start_naming_the_key(tiny_shards, tmp_path, extra, key):
    run = tmp_path / "run"
    res = train(tiny_shards, run, *extra, "train.max_steps=2")
    assert res.returncode == 2, output(res)[-3000:]
    assert key in res.stdout and "config error" in res.stdout, res.stdout[-2000:]
    assert "Traceback" not in res.stderr
    assert not run.exists()  # refused before anything was written


def shards_copy(tiny_shards: Path, dest: Path) -> Path:
    shutil.copytree(tiny_shards, dest)
    return dest


def without_val_pieces(shards: Path, keep_entries: bool) -> None:
    """Rewrite the folder's manifest (and piece index) without the val split's pieces: its shard entries dropped, or
    kept with no pieces."""
    m = Manifest.load(shards)
    lo, hi = m.split_range("val")
    rec = np.delete(m.pieces.all_records(), np.s_[lo:hi])
    entries = [e if e.split != "val" else dataclasses.replace(e, pieces=0, steps=0, notes=0) for e in m.shards
               if keep_entries or e.split != "val"]
    totals = {k: v for k, v in m.totals.items() if k != "val"}
    if keep_entries:
        totals["val"] = {**m.totals["val"], "pieces": 0, "steps": 0, "notes": 0}
    dataclasses.replace(m, shards=tuple(entries), totals=totals, pieces=PieceTable.from_records(rec)).write()


def flip_in_blob(path: Path) -> None:
    """One flipped bit inside every piece's compressed notes: same size, the tar still parses, each piece's crc32
    fails."""
    data = bytearray(path.read_bytes())
    at = data.find(b"DJN1")
    while at >= 0:
        data[at + 7] ^= 0x10
        at = data.find(b"DJN1", at + 8)
    path.write_bytes(bytes(data))


def test_absent_or_empty_val_split_skips_validation_with_a_warning(tiny_shards, tmp_path):
    absent = shards_copy(tiny_shards, tmp_path / "absent")
    without_val_pieces(absent, keep_entries=False)
    empty = shards_copy(tiny_shards, tmp_path / "empty")
    without_val_pieces(empty, keep_entries=True)
    for shards, what in ((absent, "is absent"), (empty, "has no pieces")):
        res = train(shards, tmp_path / f"run-{shards.name}", "train.max_steps=2", "train.val_every=1")
        assert res.returncode == 0, output(res)[-3000:]
        assert f"split 'val' {what}; validation is skipped" in res.stderr
        assert "validation at step" not in res.stdout


def test_missing_val_shard_is_refused_at_start_or_skipped(tiny_shards, tmp_path):
    shards = shards_copy(tiny_shards, tmp_path / "shards")
    (shards / "val-000000.tar").unlink()
    run = tmp_path / "run"
    res = train(shards, run, "train.max_steps=2", "train.val_every=1")
    assert res.returncode == 2, output(res)[-3000:]
    assert "val-000000.tar" in res.stdout and "missing" in res.stdout and "Traceback" not in res.stderr
    assert not run.exists()
    res = train(shards, run, "train.max_steps=2", "train.val_every=1", "data.on_error=skip")
    assert res.returncode == 0, output(res)[-3000:]
    assert "no readable shard left in split 'val'" in res.stderr and "validation is skipped" in res.stderr


@pytest.mark.parametrize("shard, workers", [("train-000000.tar", 0), ("train-000000.tar", 1), ("val-000000.tar", 0)])
def test_corrupt_shard_found_mid_run_exits_2_with_the_loaders_message(tiny_shards, tmp_path, shard, workers):
    """The size is right (the start check passes it); every piece's crc32 fails when it is read: in the first step
    (train) or the first validation (val). Exit 2 and the loader's sentence, no traceback; nothing saved after."""
    shards = shards_copy(tiny_shards, tmp_path / "shards")
    flip_in_blob(shards / shard)
    run = tmp_path / "run"
    res = train(shards, run, "train.max_steps=4", "train.val_every=2", "checkpoint.every=1", f"data.workers={workers}")
    assert res.returncode == 2, output(res)[-3000:]
    assert f"data error: {shards / shard}: piece " in res.stdout and "crc32 differs" in res.stdout, res.stdout[-2000:]
    assert "Traceback" not in res.stderr and "Original Traceback" not in res.stdout


def test_resume_with_another_windowing_restarts_the_data_order(trained_run, tiny_shards, tmp_path):
    """The loader's saved position counts windows of the old windowing: it is not replayed under data.seq_len=48;
    weights and optimizer carry over, the data order starts at the next epoch, and the run says so."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    res = train(tiny_shards, run, "data.seq_len=48", "train.max_steps=6")
    assert res.returncode == 0, output(res)[-3000:]
    assert "data.seq_len: 32 -> 48" in res.stdout and "starts afresh at epoch 1" in res.stdout, res.stdout[-2000:]
    assert "at step 4" in res.stdout
    state = torch.load(run / "step-00000006" / "train.pt", weights_only=True)["loader"]
    assert (state["epoch"], state["consumed"], state["seq_len"]) == (1, 16, 48)
