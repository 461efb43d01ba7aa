"""The BL2012 audit and resume: the frames scored are the .mat frames on all 88 keys, the figure without first frames,
the step-by-step path equals the forward pass on each set (and a look-ahead is caught), validation and test music in
training is found, the test split never steers training, and a stopped run resumes to the same result."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from conftest import BL2012_DIR, REPO, needs_bl2012

from deepj import config
from deepj.bench import bl2012_score
from deepj.bench.bl2012 import RESUME_FILE, BL2012Config, run
from deepj.bench.bl2012_data import NUM_KEYS, BL2012Error, make_batch, read_bl2012, shared_windows, window_set
from deepj.bench.bl2012_score import evaluate_pieces, paths_agree, step_path_nll
from deepj.model import DeepJ, ModelConfig
from deepj.music.constants import PLAY
from deepj.training.preempt import PREEMPTED_EXIT

SETS = ["JSB_Chorales.mat", "Piano_midi.mat", "MuseData.mat", "Nottingham.mat"]
TINY = ["model.time_hidden=16", "model.note_hidden=8", "model.conv_filters=4", "model.style_dim=4", "threads=1",
        "data.beat_period=4", "optim.warmup_steps=2"]


def tiny_model(seed: int = 0) -> DeepJ:
    torch.manual_seed(seed)
    model = DeepJ(ModelConfig(num_notes=88, num_styles=1, play_only=True, style_dim=4, conv_filters=4,
                              time_hidden=8, note_hidden=8))
    with torch.no_grad():  # weights away from the init's symmetry, so a wrong path shows in the NLL
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def random_pieces(rng: np.random.Generator, count: int, frames: int) -> list[np.ndarray]:
    """Piano rolls with some structure: a chord on 3 of 24 middle keys, held for a few frames at a time."""
    out = []
    for _ in range(count):
        roll = np.zeros((frames, NUM_KEYS), dtype=np.uint8)
        for s in range(0, frames, 4):
            roll[s: s + 4, 30 + rng.choice(24, 3, replace=False)] = 1
        out.append(roll)
    return out


def write_mat(path: Path, splits: dict[str, list[np.ndarray]]) -> Path:
    cells = {}
    for split, key in (("train", "traindata"), ("valid", "validdata"), ("test", "testdata")):
        arr = np.empty((1, len(splits[split])), dtype=object)
        for i, roll in enumerate(splits[split]):
            arr[0, i] = roll.astype(np.float64)
        cells[key] = arr
    scipy.io.savemat(str(path), cells)
    return path


# ------------------------------------------------------------------------------------------- what is scored
@needs_bl2012
@pytest.mark.parametrize("name", SETS)
def test_the_frames_scored_are_the_mat_frames_on_all_88_keys(name):
    raw = scipy.io.loadmat(str(BL2012_DIR / name))["testdata"][0]
    test = read_bl2012(BL2012_DIR / name)["test"]
    pieces = test[:3]
    for roll, orig in zip(pieces, raw):
        assert roll.shape == orig.shape and orig.shape[1] == 88 and np.array_equal(roll, orig > 0)
    batch = make_batch(pieces, [(i, 0, len(p), 0) for i, p in enumerate(pieces)], beat_period=16)
    for j, roll in enumerate(pieces):
        assert int(batch["mask"][j].sum()) == len(roll)
        assert torch.equal(batch["target"][j, : len(roll), :, PLAY], torch.from_numpy(roll).float())
    assert evaluate_pieces(tiny_model(), pieces, 16).frames == sum(len(p) for p in pieces)


def test_every_key_is_scored_the_lowest_and_the_highest_too():
    roll = np.zeros((6, NUM_KEYS), dtype=np.uint8)
    roll[:, 40] = 1
    model = tiny_model()
    base = evaluate_pieces(model, [roll], 16).nll
    for key in (0, 87):
        changed = roll.copy()
        changed[3, key] = 1
        assert evaluate_pieces(model, [changed], 16).nll != pytest.approx(base, rel=1e-6), key


# ------------------------------------------------------------------------------------------- exactness
@needs_bl2012
@pytest.mark.parametrize("name", SETS)
def test_the_step_by_step_path_equals_the_forward_pass(name):
    """Generation's path (one frame of the time axis, then one note at a time with the true lower note) scores the
    first frames of the first test piece exactly as the whole-piece pass: neither axis sees ahead."""
    roll = read_bl2012(BL2012_DIR / name)["test"][0][:6]
    model = tiny_model()
    forward = evaluate_pieces(model, [roll], 16).nll
    assert paths_agree(forward, step_path_nll(model, roll, 16))
    assert forward < 61  # not the uniform model's 88 ln 2: the check compares something


class SeesTheNoteAbove(DeepJ):
    """A model whose note axis is fed the note above instead of the one below: it cheats in the forward pass."""

    def forward(self, prev, target, beat, style):
        style_emb = self.embed_style(style)
        h, _ = self.time_axis(self.time_features(prev, beat), style_emb)
        upper = F.pad(target[:, :, 1:], (0, 0, 0, 1))  # note n gets target n+1
        return self.note_axis(h, upper, style_emb)[0]


def test_the_step_by_step_check_catches_a_look_ahead():
    honest = tiny_model()
    cheat = SeesTheNoteAbove(honest.cfg).eval()
    cheat.load_state_dict(honest.state_dict())
    rng = np.random.default_rng(6)
    roll = random_pieces(rng, 1, 6)[0]
    assert not paths_agree(evaluate_pieces(cheat, [roll], 16).nll, step_path_nll(cheat, roll, 16))
    assert paths_agree(evaluate_pieces(honest, [roll], 16).nll, step_path_nll(honest, roll, 16))


# ------------------------------------------------------------------------------------------- leaks
def test_shared_windows_find_a_transposed_copy_and_nothing_else():
    rng = np.random.default_rng(7)
    train = random_pieces(rng, 5, 40)
    copy = np.zeros_like(train[2])
    copy[:, 5:] = train[2][:, :-5]  # train piece 2, five semitones up
    silent = np.zeros((30, NUM_KEYS), dtype=np.uint8)
    other = [random_pieces(rng, 1, 40)[0], copy, silent]
    res = shared_windows(window_set(train, window=16), other, window=16)
    assert res["pieces_mostly_shared"] == [1]
    assert res["windows"] == 2 * 25  # 25 windows of 16 in 40 frames; the silent piece has none
    assert res["shared"] >= 25 and res["fraction"] == pytest.approx(res["shared"] / 50)


# ------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    """Two .mat files with the same train and valid pieces and different test pieces."""
    base = tmp_path_factory.mktemp("bl2012")
    rng = np.random.default_rng(8)
    train, valid = random_pieces(rng, 30, 24), random_pieces(rng, 6, 24)
    return {"a": write_mat(base / "a.mat", {"train": train, "valid": valid, "test": random_pieces(rng, 6, 24)}),
            "b": write_mat(base / "b.mat", {"train": train, "valid": valid, "test": random_pieces(rng, 4, 30)})}


def test_the_test_split_never_steers_training(synthetic, tmp_path, capsys):
    results = []
    for name in ("a", "b"):
        cfg = config.load(BL2012Config, REPO / "configs/bl2012/jsb.toml",
                          [*TINY, "train.max_epochs=3", "train.batch=6", f"run_dir={tmp_path / name}"])
        results.append(run("jsb", synthetic[name], cfg))
    a, b = results
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in b["history"]]
    assert (a["valid_nll"], a["best_epoch"], a["steps"]) == (b["valid_nll"], b["best_epoch"], b["steps"])
    assert a["test_nll"] != b["test_nll"]
    assert a["step_check"]["equal"] and a["step_check"]["frames"] == 24


def test_a_nan_loss_stops_the_run_before_anything_is_saved(synthetic, tmp_path, monkeypatch):
    from deepj.bench import bl2012

    calls = []

    def nan_at_third(model, batch):
        calls.append(1)
        nll = bl2012_score.frame_nll(model, batch)
        return nll * float("nan") if len(calls) == 3 else nll

    monkeypatch.setattr(bl2012, "frame_nll", nan_at_third)
    cfg = config.load(BL2012Config, REPO / "configs/bl2012/jsb.toml",
                      [*TINY, "train.batch=6", "train.save_minutes=1e-9", f"run_dir={tmp_path}"])
    with pytest.raises(BL2012Error, match="training loss is nan at step 3 .epoch 1."):
        run("jsb", synthetic["a"], cfg)
    state = torch.load(tmp_path / RESUME_FILE, weights_only=True)
    assert state["progress"]["step"] == 2  # saved after steps 1 and 2, not after the bad one
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def _cli(mat: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "deepj.bench", "bl2012", "--dataset", "jsb", "--mat", str(mat), "--config",
            "configs/bl2012/jsb.toml", *TINY, "train.batch=2", "train.max_epochs=5", "optim.lr=0.02",
            "train.lr_decay=0.5", "train.decay_patience=1", "train.patience=10", f"run_dir={run_dir}", *extra]


def _progress(run_dir: Path) -> dict | None:
    try:
        return torch.load(run_dir / RESUME_FILE, weights_only=True)["progress"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def _stop_at(cmd: list[str], run_dir: Path, step: int, sig: int) -> subprocess.CompletedProcess:
    """Start the run, send `sig` once its saved state has passed `step`, wait for it to end."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        p = _progress(run_dir)
        if p is not None and p["step"] >= step and not p["stopped"]:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, f"the run ended before the signal:\n{out[-2000:]}\n{err[-2000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_then_killed_resumes_to_the_uninterrupted_result(synthetic, tmp_path):
    whole = subprocess.run(_cli(synthetic["a"], tmp_path / "whole"), cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr
    want = json.loads(whole.stdout.strip().splitlines()[-1])

    run_dir = tmp_path / "stopped"
    cmd = _cli(synthetic["a"], run_dir, "train.save_minutes=1e-9")  # the state is saved after every step
    term = _stop_at(cmd, run_dir, 8, signal.SIGTERM)  # Slurm's preemption signal: saves, exits 75 as the trainer
    assert term.returncode == PREEMPTED_EXIT and "same command resumes" in term.stderr, term.stderr
    assert _progress(run_dir)["sessions"] == 1
    killed = _stop_at(cmd, run_dir, 40, signal.SIGKILL)  # no chance to save: resumes from the last save
    assert killed.returncode == -signal.SIGKILL and "resuming" in killed.stdout
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["sessions"] == 3 and want["sessions"] == 1
    # seconds = training over all sessions + scoring: within one session's wall clock, not counted twice
    assert want["history"][-1]["seconds"] < want["seconds"] <= want["session_seconds"]
    assert got["history"][-1]["seconds"] < got["seconds"]

    def same(r: dict) -> dict:
        return {"history": [{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]],
                **{k: r[k] for k in ("test_nll", "test_nll_after_first", "valid_nll", "best_epoch", "steps",
                                     "epochs", "stopped")}}

    assert same(got) == same(want)
    assert any(h["lr"] < want["history"][0]["lr"] for h in want["history"])  # a decay happened and was carried


@pytest.mark.slow
def test_a_run_ended_by_its_budget_goes_on_when_the_budget_is_raised_from_a_moved_folder(synthetic, tmp_path):
    run_dir = tmp_path / "budget"
    first = subprocess.run(_cli(synthetic["a"], run_dir, "train.max_minutes=0.0001"), cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and "time budget of 0.0001 min reached" in first.stdout, first.stderr
    assert json.loads(first.stdout.strip().splitlines()[-1])["stopped"] == "budget"
    again = subprocess.run(_cli(synthetic["a"], run_dir, "train.max_minutes=0.0001"), cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "raise train.max_minutes" in again.stderr
    moved = tmp_path / "elsewhere" / "budget"  # a run folder moved to another disk resumes from where it is now
    moved.parent.mkdir()
    run_dir.rename(moved)
    more = subprocess.run(_cli(synthetic["a"], moved, "train.max_minutes=0"), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert more.returncode == 0, more.stderr
    res = json.loads(more.stdout.strip().splitlines()[-1])
    assert (res["stopped"], res["epochs"], res["sessions"]) == ("max_epochs", 5, 2)
    assert not math.isnan(res["test_nll"])


def test_score_only_rescores_a_run_without_touching_it(synthetic, tmp_path):
    def cfg(*extra: str) -> BL2012Config:
        return config.load(BL2012Config, REPO / "configs/bl2012/jsb.toml",
                           [*TINY, "train.batch=6", f"run_dir={tmp_path}", *extra])

    with pytest.raises(BL2012Error, match="no resume.pt: there is no run to score"):
        run("jsb", synthetic["a"], cfg("train.max_epochs=2"), score_only=True)
    # a run ended by its budget after one epoch: scored as it stands, then it goes on as if never scored
    first = run("jsb", synthetic["a"], cfg("train.max_epochs=2", "train.max_minutes=0.0001"))
    saved = (tmp_path / RESUME_FILE).read_bytes()
    scored = run("jsb", synthetic["a"], cfg("train.max_epochs=2", "train.max_minutes=0.0001"), score_only=True)
    assert (tmp_path / RESUME_FILE).read_bytes() == saved
    for key in ("test_nll", "test_nll_after_first", "train_nll", "valid_nll", "epochs", "stopped", "sessions"):
        assert scored[key] == first[key], key
    # train_nll: the best model on the untransposed training pieces, no dropout
    state = torch.load(tmp_path / RESUME_FILE, weights_only=True)
    model = DeepJ(ModelConfig(**state["config"]["model"]))
    model.load_state_dict(state["best_model"])
    assert scored["train_nll"] == round(evaluate_pieces(model, read_bl2012(synthetic["a"])["train"], 4).nll, 4)
    done = run("jsb", synthetic["a"], cfg("train.max_epochs=2", "train.max_minutes=0"))
    assert (done["epochs"], done["sessions"], done["stopped"]) == (2, 2, "max_epochs")
