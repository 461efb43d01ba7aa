"""BL2012: DeepJ in play-only mode on the polyphonic-music benchmarks of Boulanger-Lewandowski, Bengio & Vincent (2012).

    python -m deepj.bench bl2012 --dataset jsb --mat PATH/TO/JSB_Chorales.mat \\
        --config configs/bl2012/jsb.toml [key=value ...]

One config per set in configs/bl2012/ (jsb, piano, musedata, nottingham); `BL2012Config` below is their schema
(tests/test_bl2012.py loads every file there). Data, crops and the leak check: `bl2012_data.py`; the metric and its
exactness check: `bl2012_score.py`. The model is `DeepJ(ModelConfig(play_only=True, num_notes=88, num_styles=1))`: it
sees and predicts the play channel only (the rolls have no velocity and no held/re-struck distinction).

Beat input: the frames are not 16th notes (quarter notes for JSB), so the beat feature is simply
`frame index within the piece % data.beat_period` (one-hot over DeepJ's 16 slots), the same in training crops
(absolute index in the piece) and evaluation. It is an input feature only.

Training: random crops of `train.seq_len` frames (0 = whole pieces), each piece visited about frames/seq_len times per
epoch, bucketed by length to limit padding; transposition by k semitones, |k| <= train.transpose, within the keys the
crop leaves free. The loss is the masked mean BCE per note-step (nats per frame / 88), optionally under bf16 autocast
(`train.precision`; scoring stays fp32). After each epoch the whole validation pieces are scored; the best model is
checkpointed into `run_dir` (kind "bl2012" in its meta.json), so `deepj.training.checkpoint.load_model` reads it. The
learning rate is multiplied by `train.lr_decay` after every `train.decay_patience` epochs without improvement;
training stops after `train.patience` such epochs, at `train.max_epochs`, or when `train.max_minutes` are spent. Only
then is the best model (chosen on validation alone) scored on the test pieces, once.

Resuming: `run_dir/resume.pt` holds everything a run needs to go on (weights, optimizer, schedule with its decays,
early-stopping counters, the best model so far, every RNG, the position within the epoch), written atomically at each
epoch's end and every `train.save_minutes`, and at SIGTERM/SIGINT/SIGUSR2/SIGHUP before exiting with 75, as the
trainer does. The same command resumes a stopped run where it stopped and gives the same result as an uninterrupted
one. A run that ended by its time budget goes on when `train.max_minutes` is raised. `--score-only` scores the best
model a run has so far (stopped or finished) without training and without touching its saved state.

Beside the test figure, result.json holds `train_nll`: the best model on its own training pieces (untransposed, no
dropout), which tells overfitting (far below valid_nll) from a model that has not yet fitted its data (level with it).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from deepj import __version__, config
from deepj.bench._machine import cpu_name
from deepj.bench.bl2012_data import (
    DATASETS,
    NUM_KEYS,
    BL2012Error,
    bernoulli_baseline,
    epoch_crops,
    make_batch,
    read_bl2012,
    shared_windows,
    window_set,
)
from deepj.bench.bl2012_score import evaluate_pieces, frame_nll, paths_agree, step_path_nll
from deepj.config import ConfigError, finite, require
from deepj.model import DeepJ, ModelConfig
from deepj.music.constants import PIANO_MAX_PITCH, PIANO_MIN_PITCH, PLAY, STEPS_PER_BAR
from deepj.music.representation import ReprConfig
from deepj.music.styles import StyleTree
from deepj.training import checkpoint
from deepj.training.checkpoint import CheckpointMeta
from deepj.training.engine import autocast_dtype, check_precision, resolve_precision
from deepj.training.optim import OptimConfig, build_optimizer, build_scheduler
from deepj.training.preempt import PREEMPTED_EXIT, StopFlag

# Test NLL in nats per frame as commonly quoted from BL2012 (RNN-NADE: the Hessian-free trained one).
PUBLISHED = {
    "jsb": {"rnn_rbm": 6.27, "rnn_nade": 5.56},
    "piano-midi": {"rnn_rbm": 7.09, "rnn_nade": 7.05},
    "musedata": {"rnn_rbm": 6.01, "rnn_nade": 5.60},
    "nottingham": {"rnn_rbm": 2.39, "rnn_nade": 2.31},
}
RESUME_FILE = "resume.pt"
# Settings a resumed run may change: where it lives (a run folder may be moved), where and how fast it runs, and how
# long it may train. Anything else would make the resumed run a different experiment.
RESUMABLE = {"run_dir", "threads", "device", "train.max_minutes", "train.save_minutes", "train.eval_frames"}
STEP_CHECK_FRAMES = 32  # frames of the first test piece scored step by step after training (88 note steps each)


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class BL2012Data:
    max_pieces: int = 0  # use only the first k pieces of each split (tests, quick checks); 0 = all
    beat_period: int = 16  # beat input = frame index % beat_period (one-hot over 16 slots); 4 = a 4/4 bar of JSB

    def __post_init__(self) -> None:
        if self.max_pieces < 0:
            raise ConfigError(f"data.max_pieces must be at least 0, got {self.max_pieces}")
        if not 1 <= self.beat_period <= STEPS_PER_BAR:
            raise ConfigError(f"data.beat_period must lie in [1, {STEPS_PER_BAR}], got {self.beat_period}")


@dataclass
class BL2012Train:
    batch: int = 16  # crops per optimizer step
    seq_len: int = 0  # frames per training crop; 0 = whole pieces
    transpose: int = 6  # max transposition in semitones either way (within the 88 keys); 0 = off
    max_epochs: int = 200
    patience: int = 10  # epochs without a better validation NLL before stopping
    lr_decay: float = 1.0  # multiply the learning rate by this after `decay_patience` epochs without improvement
    decay_patience: int = 3
    max_minutes: float = 0.0  # wall-clock budget for training over all sessions (the test pass comes after); 0 = none
    eval_frames: int = 4096  # padded frames per evaluation batch (memory)
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # training only; scoring is always fp32. auto = bf16 if native
    save_minutes: float = 10.0  # also save the resume state this often within an epoch; 0 = at epoch ends only

    def __post_init__(self) -> None:
        for key in ("batch", "max_epochs", "patience", "decay_patience", "eval_frames"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be at least 1, got {getattr(self, key)}")
        if self.seq_len < 0 or self.transpose < 0:
            raise ConfigError("train.seq_len and train.transpose must be at least 0")
        # nan passes a plain `< 0` (and trains without a budget): every float setting must be finite
        for key in ("max_minutes", "save_minutes"):
            value = getattr(self, key)
            require(finite(value) and value >= 0, f"train.{key}", ">= 0 and finite (0 = none)", value)
        require(self.precision in ("auto", "fp32", "bf16"), "train.precision", "one of auto, fp32, bf16",
                self.precision)
        require(0.0 < self.lr_decay <= 1.0, "train.lr_decay", "in (0, 1]", self.lr_decay)


@dataclass
class BL2012Config:
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    device: str = "cpu"  # "cpu" or "cuda"
    run_dir: str = ""  # checkpoint of the best model and result.json; "" = runs/bl2012-<dataset>
    data: BL2012Data = field(default_factory=BL2012Data)
    # num_notes, num_styles and play_only are fixed by the benchmark (88, 1, True) whatever the file says.
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: BL2012Train = field(default_factory=BL2012Train)


# ---------------------------------------------------------------------------------------------------- run
@dataclass
class Progress:
    """Where a run is: saved in resume.pt, so a stopped run goes on from here."""

    epoch: int = 0  # epochs finished
    batch: int = 0  # batches finished in the epoch under way
    step: int = 0
    best: float = math.inf  # best validation NLL so far, and that epoch's figure without first frames
    best_after_first: float = math.inf
    best_epoch: int = 0
    bad: int = 0  # epochs since the best one
    seconds: float = 0.0  # training wall clock over every session
    sessions: int = 0
    stopped: str = ""  # why training ended: "patience", "max_epochs", "budget"; "" while it runs
    train_sum: float = 0.0  # NLL sum and frames of the epoch under way (its printed train figure)
    train_frames: float = 0.0
    history: list = field(default_factory=list)  # per finished epoch: epoch, step, train, valid, lr, seconds


class Stopped(Exception):
    """A signal asked the run to stop; its state is saved. The message is the signal's name."""


def machine() -> str:
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_name()}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def save_best(run_dir: Path, step: int, model: DeepJ, cfg: BL2012Config, dataset: str, mat_hash: str) -> Path:
    """The best model as a complete deepj checkpoint (weights_only-loadable; keeps only the newest), described by a
    `CheckpointMeta` of kind "bl2012": one style, `bl2012/<dataset>`; the 88 piano keys; the .mat file's checksum as
    the corpus identity; the resolved config."""
    meta = CheckpointMeta(step=step, world_size=1, kind="bl2012", backend="none", model=cfg.model,
                          styles=StyleTree.from_leaves([f"bl2012/{dataset}"]),
                          representation=ReprConfig(PIANO_MIN_PITCH, PIANO_MAX_PITCH), manifest_hash=mat_hash,
                          config=config.to_dict(cfg), tool=f"deepj {__version__}")
    return checkpoint.save(run_dir, step, shared={"engine": {"model": model.state_dict()}},
                           rank_state={"rng": checkpoint.rng_state()}, keep=1, meta=meta)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def save_state(run_dir: Path, state: dict) -> None:
    """resume.pt, atomically: a kill during the write leaves the previous one whole."""
    tmp = run_dir / (RESUME_FILE + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / RESUME_FILE)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_state(run_dir: Path, cfg: BL2012Config, mat_hash: str, *, finished_ok: bool = False) -> dict | None:
    """The saved state of a run to resume in `run_dir`, None for a new run, or a BL2012Error saying why not (a finished
    run too, unless `finished_ok`: scoring it again)."""
    path = run_dir / RESUME_FILE
    if not path.is_file():
        if checkpoint.list_checkpoints(run_dir):  # an older best model would be kept (or chosen) over this run's
            raise BL2012Error(f"{run_dir} already holds checkpoints of an earlier run and no {RESUME_FILE} to resume "
                              "it; set run_dir=... to a new folder or delete it")
        return None
    state = torch.load(path, weights_only=True)
    old, new = _flat(state["config"]), _flat(config.to_dict(cfg))
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in RESUMABLE)
    if differ:
        raise BL2012Error(f"{run_dir} holds a run with other settings ("
                          + ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in differ)
                          + "); the run's own config resumes it (its config.toml), a new run needs a new run_dir")
    if state["mat_hash"] != mat_hash:
        raise BL2012Error(f"{run_dir} was trained on another .mat file (sha256 {state['mat_hash']}...)")
    done = state["progress"]["stopped"]
    budget = cfg.train.max_minutes * 60
    spent = done == "budget" and budget and state["progress"]["seconds"] >= budget
    finished = done in ("patience", "max_epochs") or spent
    if finished and not finished_ok:
        more = " (raise train.max_minutes to train on)" if done == "budget" else ""
        raise BL2012Error(f"{run_dir}: this run has finished ({done}){more}; its result is {run_dir / 'result.json'}")
    return state


def run(dataset: str, mat: Path, cfg: BL2012Config, command: str = "", *, score_only: bool = False) -> dict:
    """Train with early stopping (resuming a stopped run), score the best model on the test pieces once; returns the
    result record. `score_only`: no training; score the best model a saved run (finished or stopped) has so far."""
    t0 = time.perf_counter()
    splits = read_bl2012(mat)
    if cfg.data.max_pieces:
        splits = {k: v[: cfg.data.max_pieces] for k, v in splits.items()}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(cfg.device)
    precision = resolve_precision(cfg.train.precision, device)
    check_precision(precision, device)
    cfg.model = dataclasses.replace(cfg.model, num_notes=NUM_KEYS, num_styles=1, play_only=True)
    run_dir = Path(cfg.run_dir or f"runs/bl2012-{dataset}")
    mat_hash = file_hash(mat)
    state = load_state(run_dir, cfg, mat_hash, finished_ok=score_only)
    if score_only and state is None:
        raise BL2012Error(f"{run_dir} holds no {RESUME_FILE}: there is no run to score (--score-only scores a run "
                          "that has trained)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(config.to_toml(cfg))
    baseline = bernoulli_baseline(splits["train"], splits["test"])
    counts = {k: (len(v), sum(len(p) for p in v)) for k, v in splits.items()}
    print(f"bl2012 {dataset}: {mat} | " + ", ".join(f"{k} {n} pieces / {f} frames" for k, (n, f) in counts.items()),
          flush=True)
    print(f"# resolved config ({run_dir / 'config.toml'})\n{config.to_toml(cfg)}", flush=True)

    model = DeepJ(cfg.model).to(device)
    # Start the play head at the training key density (about 4 of 88 keys sound) instead of p = 0.5: the first
    # epochs then learn music rather than sparsity (61 -> ~15 nats per frame before any step).
    density = float(np.mean([p.mean() for p in splits["train"]]))
    with torch.no_grad():
        model.head.bias[PLAY] = math.log(density / (1 - density))
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    per_epoch = len(epoch_crops(splits["train"], cfg.train.seq_len, 0, cfg.train.batch, np.random.default_rng(0)))
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.max_epochs * per_epoch)
    progress, best_state, ckpt = Progress(), None, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        checkpoint.set_rng_state(state["torch_rng"])
        progress, best_state = Progress(**state["progress"]), state["best_model"]
        if not score_only:
            progress.stopped = ""  # a budget-ended run goes on
        found = checkpoint.list_checkpoints(run_dir)
        ckpt = found[-1] if found else None
        verb = "scoring" if score_only else "resuming"
        print(f"{verb} {run_dir}: epoch {progress.epoch + 1}, batch {progress.batch} of {per_epoch}, step "
              f"{progress.step}; best valid {progress.best:.4f} (epoch {progress.best_epoch}), {progress.bad} epochs "
              f"since; {progress.seconds / 60:.1f} min trained in {progress.sessions} session(s)", flush=True)
    if not score_only:
        progress.sessions += 1
    print(f"model: {model.num_params():,} parameters; {per_epoch} steps per epoch; training in {precision}, scoring "
          f"in fp32; {machine()}", flush=True)

    session_start, trained_before = time.perf_counter(), progress.seconds
    budget = 60 * cfg.train.max_minutes if cfg.train.max_minutes else math.inf

    def elapsed() -> float:
        return trained_before + time.perf_counter() - session_start

    def save(next_rng: dict) -> None:
        """next_rng: the generator state the epoch under way (or the next one) draws its crops from."""
        progress.seconds = elapsed()
        save_state(run_dir, {"progress": dataclasses.asdict(progress), "rng": next_rng,
                             "torch_rng": checkpoint.rng_state(), "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "best_model": best_state, "config": config.to_dict(cfg), "mat_hash": mat_hash})

    if score_only:
        if best_state is None:
            raise BL2012Error(f"{run_dir} has not finished an epoch yet: there is no best model to score")
        print(f"scoring the best model so far (epoch {progress.best_epoch}) without training", flush=True)
        model.load_state_dict(best_state)
        return score_best(dataset, model, splits, cfg, progress, run_dir=run_dir, baseline=baseline,
                          precision=precision, started=t0, ckpt=ckpt, mat_hash=mat_hash, command=command)

    amp = autocast_dtype(precision)
    stop = StopFlag()  # SIGTERM, SIGUSR2 (Slurm), SIGINT, SIGHUP: save at the next step, then stop
    try:
        last_save = time.perf_counter()
        while not progress.stopped:
            epoch_rng = copy.deepcopy(rng.bit_generator.state)  # this epoch's crops are drawn from here, on resume too
            batches = epoch_crops(splits["train"], cfg.train.seq_len, cfg.train.transpose, cfg.train.batch, rng)
            model.train()
            te, seen = time.perf_counter(), 0.0  # seen: frames trained on in this session's part of the epoch
            for crops in batches[progress.batch:]:
                batch = {k: v.to(device) for k, v in make_batch(splits["train"], crops, cfg.data.beat_period).items()}
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    nll = frame_nll(model, batch)  # (B, L)
                frames = batch["mask"].sum()
                nll_sum = nll.sum()
                loss = nll_sum / (frames * NUM_KEYS)  # mean BCE per note-step: OptimConfig's scale (grad_clip)
                total = float(nll_sum.detach())
                if not math.isfinite(total):  # stop before the step and before any save: the saved state is sound
                    raise BL2012Error(f"the training loss is {float(loss.detach())} at step {progress.step + 1} (epoch "
                                      f"{progress.epoch + 1}); nothing was saved after the last good step, so the same "
                                      f"command resumes from there; a lower optim.lr or optim.grad_clip may avoid it")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                progress.step, progress.batch = progress.step + 1, progress.batch + 1
                progress.train_sum += total
                progress.train_frames += float(frames)
                seen += float(frames)
                if stop.local:
                    save(epoch_rng)
                    raise Stopped(stop.signal_name)
                if elapsed() > budget:
                    break
                if cfg.train.save_minutes and time.perf_counter() - last_save > 60 * cfg.train.save_minutes:
                    save(epoch_rng)
                    last_save = time.perf_counter()
            speed = seen / max(time.perf_counter() - te, 1e-9)  # training frames per second, validation excluded
            valid = evaluate_pieces(model, splits["valid"], cfg.data.beat_period, cfg.train.eval_frames)
            progress.epoch, progress.batch = progress.epoch + 1, 0
            mark = ""
            if valid.nll < progress.best:
                progress.best, progress.best_after_first = valid.nll, valid.nll_after_first
                progress.best_epoch, progress.bad, mark = progress.epoch, 0, " *"
                best_state = copy.deepcopy(model.state_dict())
                ckpt = save_best(run_dir, progress.step, model, cfg, dataset, mat_hash)
            else:
                progress.bad += 1
                if cfg.train.lr_decay < 1.0 and progress.bad % cfg.train.decay_patience == 0:
                    scheduler.base_lrs = [lr * cfg.train.lr_decay for lr in scheduler.base_lrs]
            lr = optimizer.param_groups[0]["lr"]
            train_nll = progress.train_sum / max(progress.train_frames, 1)
            progress.history.append({"epoch": progress.epoch, "step": progress.step, "train": round(train_nll, 4),
                                     "valid": round(valid.nll, 4), "lr": lr, "seconds": round(elapsed(), 1)})
            progress.train_sum = progress.train_frames = 0.0
            print(f"epoch {progress.epoch:3d} | step {progress.step:6d} | train {train_nll:.4f} | valid "
                  f"{valid.nll:.4f}{mark} | lr {lr:.2e} | {time.perf_counter() - te:.0f}s (trained "
                  f"{elapsed() / 60:.1f} min) | {speed:,.0f} frames/s", flush=True)
            if progress.bad >= cfg.train.patience:
                progress.stopped = "patience"
                print(f"early stop: {progress.bad} epochs without a better validation NLL", flush=True)
            elif progress.epoch >= cfg.train.max_epochs:
                progress.stopped = "max_epochs"
            elif elapsed() > budget:
                progress.stopped = "budget"
                print(f"time budget of {cfg.train.max_minutes:g} min reached", flush=True)
            save(copy.deepcopy(rng.bit_generator.state))  # the next epoch draws its crops from here
            last_save = time.perf_counter()
    finally:
        stop.restore()

    if best_state is None:
        raise BL2012Error(f"training diverged: validation NLL {valid.nll} at every epoch (lower optim.lr?)")
    model.load_state_dict(best_state)
    return score_best(dataset, model, splits, cfg, progress, run_dir=run_dir, baseline=baseline, precision=precision,
                      started=t0, ckpt=ckpt, mat_hash=mat_hash, command=command)


def score_best(dataset: str, model: DeepJ, splits: dict, cfg: BL2012Config, progress: Progress, *, run_dir: Path,
               baseline: float, precision: str, started: float, ckpt: Path | None, mat_hash: str, command: str) -> dict:
    """The test score of the best model with the audit beside it; written to run_dir/result.json."""
    scoring_start = time.perf_counter()
    beat, frames = cfg.data.beat_period, cfg.train.eval_frames
    test = evaluate_pieces(model, splits["test"], beat, frames)
    # The same model on its own training pieces (untransposed, no dropout): far below valid_nll is overfitting;
    # level with it, the model has not yet fitted what it has seen (capacity or training time).
    train = evaluate_pieces(model, splits["train"], beat, frames)
    # Exactness: the first test frames scored one frame and one note at a time equal the whole-piece forward pass.
    piece = splits["test"][0][:STEP_CHECK_FRAMES]
    forward, stepped = evaluate_pieces(model, [piece], beat).nll, step_path_nll(model, piece, beat)
    step_check = {"frames": len(piece), "forward": round(forward, 6), "step_path": round(stepped, 6),
                  "equal": paths_agree(forward, stepped)}
    if not step_check["equal"]:
        print(f"WARNING: the step-by-step path scores {stepped:.6f} and the forward pass {forward:.6f}: the "
              "likelihood is not exact (something looks ahead)", file=sys.stderr, flush=True)
    seen = window_set(splits["train"])
    leaks = {split: shared_windows(seen, splits[split]) for split in ("valid", "test")}
    shared = set(leaks["test"]["pieces_mostly_shared"])
    rest = [p for i, p in enumerate(splits["test"]) if i not in shared]
    without_shared = evaluate_pieces(model, rest, beat, frames).nll if shared and rest else None
    result = {
        "benchmark": "bl2012", "dataset": dataset, "test_nll": round(test.nll, 4),
        "test_nll_after_first": round(test.nll_after_first, 4), "valid_nll": round(progress.best, 4),
        "valid_nll_after_first": round(progress.best_after_first, 4),
        "train_nll": round(train.nll, 4), "baseline_nll": round(baseline, 4),
        "published": PUBLISHED.get(dataset, {}), "test_pieces": test.pieces, "test_frames": test.frames,
        "epochs": progress.epoch, "best_epoch": progress.best_epoch,
        "stopped": progress.stopped or "not finished: scored with --score-only",
        "steps": progress.step, "params": model.num_params(), "precision": precision,
        # training over every session (saved at its end) plus this scoring pass
        "seconds": round(progress.seconds + time.perf_counter() - scoring_start, 1),
        "sessions": progress.sessions, "session_seconds": round(time.perf_counter() - started, 1),
        "machine": machine(), "checkpoint": str(ckpt), "mat_sha256": mat_hash, "command": command,
        "step_check": step_check, "shared_windows": leaks,
        "test_nll_without_mostly_shared": None if without_shared is None else round(without_shared, 4),
        "history": progress.history, "config": config.to_dict(cfg),
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m deepj.bench bl2012", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="which benchmark (names the run)")
    p.add_argument("--mat", required=True, help=f"its .mat file ({', '.join(DATASETS.values())})")
    p.add_argument("--config", help="TOML file, e.g. configs/bl2012/jsb.toml")
    p.add_argument("--score-only", action="store_true",
                   help="do not train: score the best model the run in run_dir has so far (a stopped run still "
                        "resumes afterwards; a finished one is scored again)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_epochs=5 model.dropout=0.3")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = config.load(BL2012Config, args.config, args.overrides)
        if cfg.device not in ("cpu", "cuda"):
            raise ConfigError(f"device: {cfg.device!r} is not one of 'cpu', 'cuda'")
        argv_str = " ".join(["python -m deepj.bench bl2012", *(sys.argv[2:] if argv is None else argv)])
        result = run(args.dataset, Path(args.mat), cfg, command=argv_str, score_only=args.score_only)
    except (ConfigError, BL2012Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:
        print(f"stopped by {e}: the state is saved; the same command resumes the run", file=sys.stderr, flush=True)
        return PREEMPTED_EXIT  # as the trainer: slurm/train.sbatch and Slurm read it as "requeue me"
    pub = result["published"]
    print(f"{args.dataset}: test NLL {result['test_nll']:.3f} nats/frame ({result['test_nll_after_first']:.3f} "
          f"without first frames; valid {result['valid_nll']:.3f}) | independent Bernoulli "
          f"{result['baseline_nll']:.3f} | RNN-RBM {pub.get('rnn_rbm')} | RNN-NADE {pub.get('rnn_nade')}", flush=True)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
