"""BL2012: DeepJ in play-only mode on the polyphonic-music benchmarks of Boulanger-Lewandowski, Bengio & Vincent (2012).

    python -m deepj.bench bl2012 --dataset jsb --mat PATH/TO/JSB_Chorales.mat \
        --config configs/bl2012/jsb.toml [key=value ...]
    python -m deepj.bench bl2012 --dataset piano-midi --mat PATH/TO/Piano_midi.mat \
        --config configs/bl2012/piano.toml [key=value ...]

Configs: `BL2012Config` below is the schema of configs/bl2012/*.toml (tests/test_bl2012.py loads every file there).

Data: a .mat file with keys traindata / validdata / testdata, each a 1xK object array of (frames, 88) 0/1 piano rolls,
column 0 = MIDI 21 (A0). Read as is; nothing is copied. There is no velocity and no held/re-struck distinction, so the
model runs with `ModelConfig(play_only=True, num_notes=88, num_styles=1)`: it sees and predicts the play channel only.

Metric (the literature's convention): negative log-likelihood in nats per frame = the Bernoulli NLL of the play logits
summed over the 88 keys, averaged over every frame of every test piece, each counted once. A piece is run whole
(teacher forcing along the full piece from a zero LSTM state), so every frame is scored with its full history; its
first frame is predicted from an all-zero previous frame. Printed beside it: an independent-Bernoulli baseline computed
here (per-key frequency on the training frames, add-1/2 smoothing: p = (count + 0.5) / (frames + 1)) and the
published RNN-RBM and RNN-NADE figures.

Beat input: the frames are not 16th notes (quarter notes for JSB), so the beat feature is simply
`frame index within the piece % data.beat_period` (one-hot over DeepJ's 16 slots), the same in training crops
(absolute index in the piece) and evaluation. It is an input feature only.

Training: random crops of `train.seq_len` frames (0 = whole pieces), each piece visited about frames/seq_len times per
epoch, bucketed by length to limit padding (padded frames are masked out of the loss; padding sits after the real
frames, so the causal time axis never sees it); transposition by k semitones, |k| <= train.transpose, drawn within the
keys the crop leaves free (nothing leaves the 88 keys). The loss is the masked mean BCE per note-step (nats per frame
/ 88). After each epoch the whole validation pieces are scored; the best model is checkpointed into `run_dir` by
`deepj.training.checkpoint.save` (kind "bl2012" in its meta.json: the model config, the single style `bl2012/<dataset>`,
the 88 piano keys, the .mat file's checksum, the resolved config), so `deepj.training.checkpoint.load_model` reads it;
training stops after `train.patience` epochs without improvement, at `train.max_epochs`, or after `train.max_minutes`.
The play head's bias starts at the logit of the training key density (not 0, i.e. p = 1/2), which saves the first epochs
from learning sparsity alone. The best model is then scored on the test pieces. The last stdout line is one JSON object.
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

import numpy as np
import scipy.io
import torch
import torch.nn.functional as F

from deepj import __version__, config
from deepj.bench._machine import cpu_name
from deepj.config import ConfigError, finite, require
from deepj.model import DeepJ, ModelConfig
from deepj.music.constants import NUM_CHANNELS, PIANO_MAX_PITCH, PIANO_MIN_PITCH, PLAY, STEPS_PER_BAR
from deepj.music.representation import ReprConfig
from deepj.music.styles import StyleTree
from deepj.training import checkpoint
from deepj.training.checkpoint import CheckpointMeta
from deepj.training.optim import OptimConfig, build_optimizer, build_scheduler

NUM_KEYS = PIANO_MAX_PITCH - PIANO_MIN_PITCH  # 88: column 0 = MIDI 21 (A0), column 87 = MIDI 108 (C8)
SPLIT_KEYS = {"train": "traindata", "valid": "validdata", "test": "testdata"}
DATASETS = {"jsb": "JSB_Chorales.mat", "piano-midi": "Piano_midi.mat", "musedata": "MuseData.mat",
            "nottingham": "Nottingham.mat"}
# Test NLL in nats per frame as commonly quoted from BL2012 (RNN-NADE: the Hessian-free trained one).
PUBLISHED = {
    "jsb": {"rnn_rbm": 6.27, "rnn_nade": 5.56},
    "piano-midi": {"rnn_rbm": 7.09, "rnn_nade": 7.05},
    "musedata": {"rnn_rbm": 6.01, "rnn_nade": 5.60},
    "nottingham": {"rnn_rbm": 2.39, "rnn_nade": 2.31},
}
BASELINE_SMOOTHING = 0.5  # add-1/2 (Krichevsky-Trofimov): keeps keys never played in training finite


class BL2012Error(Exception):
    """A BL2012 data file that cannot be used; the message names the file and what is wrong."""


# ---------------------------------------------------------------------------------------------------- data
def read_bl2012(path: str | Path) -> dict[str, list[np.ndarray]]:
    """{"train", "valid", "test"} -> list of (frames, 88) uint8 0/1 rolls, in file order."""
    path = Path(path)
    if not path.is_file():
        raise BL2012Error(f"{path}: no such file (expected a BL2012 .mat file, one of {', '.join(DATASETS.values())})")
    try:
        mat = scipy.io.loadmat(str(path))
    except (scipy.io.matlab.MatReadError, ValueError, OSError) as e:
        raise BL2012Error(f"{path}: not a readable MATLAB .mat file ({type(e).__name__}: {e})") from None
    missing = [k for k in SPLIT_KEYS.values() if k not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise BL2012Error(f"{path}: missing key(s) {', '.join(missing)}; a BL2012 file holds traindata, validdata "
                          f"and testdata (this one has: {', '.join(found) or 'nothing'})")
    out: dict[str, list[np.ndarray]] = {}
    for split, key in SPLIT_KEYS.items():
        arr = mat[key]
        if arr.dtype != object or arr.ndim != 2 or arr.shape[0] != 1:
            raise BL2012Error(f"{path}: {key} is a {arr.dtype} array of shape {arr.shape}, expected a 1xK cell array "
                              "of (frames, 88) piano rolls")
        pieces = []
        for i, roll in enumerate(arr[0]):
            roll = np.asarray(roll)
            if roll.ndim != 2 or roll.shape[1] != NUM_KEYS or roll.shape[0] == 0:
                raise BL2012Error(f"{path}: {key} piece {i} has shape {roll.shape}, expected (frames >= 1, 88)")
            pieces.append((roll > 0).astype(np.uint8))
        if not pieces:
            raise BL2012Error(f"{path}: {key} holds no pieces")
        out[split] = pieces
    return out


def bernoulli_baseline(train: list[np.ndarray], test: list[np.ndarray], smoothing: float = BASELINE_SMOOTHING) -> float:
    """NLL (nats per frame, summed over keys) on `test` of independent per-key Bernoullis fitted on `train`."""
    frames = np.concatenate(train).astype(np.float64)  # (F, 88)
    p = (frames.sum(0) + smoothing) / (len(frames) + 2 * smoothing)  # (88,)
    x = np.concatenate(test).astype(np.float64)  # (F', 88)
    return float(-(x @ np.log(p) + (1 - x) @ np.log1p(-p)).mean())


def make_batch(pieces: list[np.ndarray], crops: list[tuple[int, int, int, int]], beat_period: int) -> dict:
    """Crops (piece, start, length, transposition) -> tensors padded to the longest crop.

    Returns prev/target (B, L, 88, 3) [play, 0, 0] of frames t-1 / t, beat (B, L) int64, style (B, 1) ones, and
    mask (B, L) float32: 1 on real frames. Frame -1 of a piece (prev of its first frame) is all zeros.
    """
    length = max(c[2] for c in crops)
    notes = np.zeros((len(crops), length + 1, NUM_KEYS), dtype=np.float32)  # (B, L+1, 88): frames s-1 .. s+L-1
    mask = np.zeros((len(crops), length), dtype=np.float32)
    beat = np.zeros((len(crops), length), dtype=np.int64)
    for j, (i, s, n, k) in enumerate(crops):
        seg = pieces[i][max(s - 1, 0): s + n]  # (n or n+1, 88)
        dst = notes[j, 1 if s == 0 else 0:][: len(seg)]
        if k >= 0:
            dst[:, k:] = seg[:, : NUM_KEYS - k]
        else:
            dst[:, :k] = seg[:, -k:]
        mask[j, :n] = 1.0
        beat[j] = (s + np.arange(length)) % beat_period
    full = torch.zeros((len(crops), length + 1, NUM_KEYS, NUM_CHANNELS))  # (B, L+1, 88, 3): replay, volume stay 0
    full[..., PLAY] = torch.from_numpy(notes)
    return {"prev": full[:, :-1], "target": full[:, 1:], "beat": torch.from_numpy(beat),
            "style": torch.ones(len(crops), 1), "mask": torch.from_numpy(mask)}


def frame_nll(model: DeepJ, batch: dict) -> torch.Tensor:
    """(B, L) play NLL per frame, summed over keys, zero on padding."""
    out = model(batch["prev"], batch["target"], batch["beat"], batch["style"])  # (B, L, 88, 3)
    nll = F.binary_cross_entropy_with_logits(out[..., PLAY].float(), batch["target"][..., PLAY], reduction="none")
    return nll.sum(-1) * batch["mask"]  # (B, L)


@torch.no_grad()
def evaluate_pieces(model: DeepJ, pieces: list[np.ndarray], beat_period: int, frame_budget: int = 4096) -> float:
    """Nats per frame over whole pieces (teacher forcing from a zero state), every frame counted once."""
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i]))
    total, frames, j = 0.0, 0, 0
    while j < len(order):  # longest first; a batch holds as many pieces as fit in frame_budget padded frames
        longest = len(pieces[order[j]])
        size = max(1, frame_budget // longest)
        group = order[j: j + size]
        j += len(group)
        batch = make_batch(pieces, [(i, 0, len(pieces[i]), 0) for i in group], beat_period)
        batch = {k: v.to(device) for k, v in batch.items()}
        total += float(frame_nll(model, batch).double().sum())
        frames += sum(len(pieces[i]) for i in group)
    model.train(was_training)
    return total / frames


def epoch_crops(pieces: list[np.ndarray], seq_len: int, transpose: int, batch: int,
                rng: np.random.Generator) -> list[list[tuple[int, int, int, int]]]:
    """One epoch's batches of crops (piece, start, length, shift), bucketed by length, in random order."""
    crops = []
    for i, roll in enumerate(pieces):
        n = len(roll) if seq_len == 0 else min(seq_len, len(roll))
        for _ in range(max(1, round(len(roll) / n))):
            s = int(rng.integers(0, len(roll) - n + 1))
            k = 0
            if transpose:
                keys = np.flatnonzero(roll[max(s - 1, 0): s + n].any(0))  # keys sounding in the crop
                lo = -transpose if len(keys) == 0 else max(-transpose, -int(keys[0]))
                hi = transpose if len(keys) == 0 else min(transpose, NUM_KEYS - 1 - int(keys[-1]))
                k = int(rng.integers(lo, hi + 1))
            crops.append((i, s, n, k))
    rng.shuffle(crops)
    # Sort within chunks of 32 batches by length, cut into batches, shuffle the batches: little padding, random order.
    chunk = 32 * batch
    batches = []
    for c in range(0, len(crops), chunk):
        part = sorted(crops[c: c + chunk], key=lambda x: x[2])
        batches += [part[b: b + batch] for b in range(0, len(part), batch)]
    rng.shuffle(batches)
    return batches


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
    max_minutes: float = 0.0  # wall-clock budget for training (the final test pass comes after); 0 = none
    eval_frames: int = 4096  # padded frames per evaluation batch (memory)

    def __post_init__(self) -> None:
        for key in ("batch", "max_epochs", "patience", "decay_patience", "eval_frames"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be at least 1, got {getattr(self, key)}")
        if self.seq_len < 0 or self.transpose < 0:
            raise ConfigError("train.seq_len and train.transpose must be at least 0")
        # nan passes a plain `< 0` (and trains without a budget): every float setting must be finite
        require(finite(self.max_minutes) and self.max_minutes >= 0, "train.max_minutes", ">= 0 and finite (0 = none)",
                self.max_minutes)
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


def run(dataset: str, mat: Path, cfg: BL2012Config, command: str = "") -> dict:
    """Train with early stopping, score the best model on the test pieces; returns the result record."""
    t0 = time.perf_counter()
    splits = read_bl2012(mat)
    if cfg.data.max_pieces:
        splits = {k: v[: cfg.data.max_pieces] for k, v in splits.items()}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(cfg.device)
    cfg.model = dataclasses.replace(cfg.model, num_notes=NUM_KEYS, num_styles=1, play_only=True)
    run_dir = Path(cfg.run_dir or f"runs/bl2012-{dataset}")
    if checkpoint.list_checkpoints(run_dir):  # an older best model would be kept (or chosen) over this run's
        raise BL2012Error(f"{run_dir} already holds checkpoints of an earlier run; set run_dir=... to a new folder "
                          "or delete it")
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
    print(f"model: {model.num_params():,} parameters; {per_epoch} steps per epoch; {machine()}", flush=True)

    def to_dev(b: dict) -> dict:
        return {k: v.to(device) for k, v in b.items()}

    mat_hash = file_hash(mat)
    best, best_state, best_epoch, bad, step, epoch = math.inf, None, 0, 0, 0, 0
    ckpt = None
    deadline = t0 + 60 * cfg.train.max_minutes if cfg.train.max_minutes else math.inf
    for epoch in range(1, cfg.train.max_epochs + 1):
        model.train()
        te, tsum, tframes = time.perf_counter(), 0.0, 0.0
        for crops in epoch_crops(splits["train"], cfg.train.seq_len, cfg.train.transpose, cfg.train.batch, rng):
            batch = to_dev(make_batch(splits["train"], crops, cfg.data.beat_period))
            nll = frame_nll(model, batch)  # (B, L)
            frames = batch["mask"].sum()
            loss = nll.sum() / (frames * NUM_KEYS)  # mean BCE per note-step: OptimConfig's scale (grad_clip)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            tsum, tframes = tsum + float(nll.detach().sum()), tframes + float(frames)
            if time.perf_counter() > deadline:
                break
        valid = evaluate_pieces(model, splits["valid"], cfg.data.beat_period, cfg.train.eval_frames)
        mark = ""
        if valid < best:
            best, best_epoch, bad, mark = valid, epoch, 0, " *"
            best_state = copy.deepcopy(model.state_dict())
            ckpt = save_best(run_dir, step, model, cfg, dataset, mat_hash)
        else:
            bad += 1
            if cfg.train.lr_decay < 1.0 and bad % cfg.train.decay_patience == 0:
                scheduler.base_lrs = [lr * cfg.train.lr_decay for lr in scheduler.base_lrs]
        lr = optimizer.param_groups[0]["lr"]
        print(f"epoch {epoch:3d} | step {step:6d} | train {tsum / max(tframes, 1):.4f} | valid {valid:.4f}{mark} | "
              f"lr {lr:.2e} | {time.perf_counter() - te:.0f}s (total {(time.perf_counter() - t0) / 60:.1f} min)",
              flush=True)
        if bad >= cfg.train.patience:
            print(f"early stop: {bad} epochs without a better validation NLL", flush=True)
            break
        if time.perf_counter() > deadline:
            print(f"time budget of {cfg.train.max_minutes} min reached", flush=True)
            break

    if best_state is None:
        raise BL2012Error(f"training diverged: validation NLL {valid} at every epoch (lower optim.lr?)")
    model.load_state_dict(best_state)
    test = evaluate_pieces(model, splits["test"], cfg.data.beat_period, cfg.train.eval_frames)
    result = {
        "benchmark": "bl2012", "dataset": dataset, "test_nll": round(test, 4), "valid_nll": round(best, 4),
        "baseline_nll": round(baseline, 4), "published": PUBLISHED.get(dataset, {}),
        "test_pieces": counts["test"][0], "test_frames": counts["test"][1], "epochs": epoch, "best_epoch": best_epoch,
        "steps": step, "params": model.num_params(), "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(), "checkpoint": str(ckpt), "mat_sha256": mat_hash, "command": command,
        "config": config.to_dict(cfg),
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m deepj.bench bl2012", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="which benchmark (names the run)")
    p.add_argument("--mat", required=True, help=f"its .mat file ({', '.join(DATASETS.values())})")
    p.add_argument("--config", help="TOML file, e.g. configs/bl2012/jsb.toml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_epochs=5 model.dropout=0.3")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = config.load(BL2012Config, args.config, args.overrides)
        if cfg.device not in ("cpu", "cuda"):
            raise ConfigError(f"device: {cfg.device!r} is not one of 'cpu', 'cuda'")
        argv_str = " ".join(["python -m deepj.bench bl2012", *(sys.argv[2:] if argv is None else argv)])
        result = run(args.dataset, Path(args.mat), cfg, command=argv_str)
    except (ConfigError, BL2012Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pub = result["published"]
    print(f"{args.dataset}: test NLL {result['test_nll']:.3f} nats/frame (valid {result['valid_nll']:.3f}) | "
          f"independent Bernoulli {result['baseline_nll']:.3f} | RNN-RBM {pub.get('rnn_rbm')} | "
          f"RNN-NADE {pub.get('rnn_nade')}", flush=True)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
