"""Style fidelity: does a trained DeepJ write music that a style classifier, trained on real music, files under the
style it was asked for? `python -m deepj.fidelity RUN_OR_CHECKPOINT --data SHARDS [--level period|composer|both]
[--num N] [--bars B] [--blend A,B] [--out DIR]`.

1. Real windows of W = 16 * bars steps (default: the checkpoint's training window) are cut from the shards: the
   train split (to fit the classifier) and the val split (the ceiling: its accuracy on held-out real music).
2. A small classifier (standardised musical features -> MLP, `StyleClassifier`) is fitted per level: periods (the
   first level of the style tree) and composers (the leaf styles).
3. For each style the run's model generates N pieces of W steps (`deepj.sampling.generate`); the classifier's
   accuracy on them against chance (1 / classes) is the fidelity. With `--lead-bars L` each piece is L + W/16 bars
   long and the classifier sees its last W steps: the music after the opening, which a generated piece starts from
   silence and the model has learned least. With `--blend A,B`, pieces for w*A + (1-w)*B,
   w in {0, .25, .5, .75, 1}, give the classifier's P(A) as a function of w. A diagnostic beside it
   (`shift_corrected`) classifies the generated pieces again after removing the feature offset they all share.
4. Music statistics (`deepj.musicstats`) per style, generated vs held-out real, and a listening page
   (`deepj.listening`) with piano rolls and audio.

So that the classifier separates styles and not real from generated music, it sees only what both share:
- the play and onset structure of the roll, never the volume channel (the corpus' velocities come from score
  dynamics; the generator's volume head is smoother) - features use pitch, onset and duration only;
- the same pitch range (the checkpoint's, which must equal the shards') and the same window length W, cut at bar
  starts; real windows shorter than W (padded with silence at a piece's end) are left out;
- pitch classes relative to the window's estimated key (Krumhansl-Kessler), because the generator was trained on
  randomly transposed windows (data.transpose) and keys are not what distinguishes these styles; the classifier is
  trained on windows transposed the same way, so register features see the distribution the generator learned.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepj import checkpoint
from deepj.constants import PITCH_CLASSES, PLAY, STEPS_PER_BAR
from deepj.data import DataConfig, StreamingLoader
from deepj.representation import ReprConfig, roll_to_notes
from deepj.sampling import SampleConfig
from deepj.shards import ShardError, read_manifest
from deepj.styles import StyleError, style_vector, top_level_names

LEVELS = ("period", "composer")
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Krumhansl-Kessler key profiles, tonic first.
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# (24, 12): each profile rotated to each tonic (row = mode * 12 + tonic), standardised for Pearson correlation.
KEY_PROFILES = np.stack([np.roll(p, k) for p in (KK_MAJOR, KK_MINOR) for k in range(PITCH_CLASSES)])
KEY_PROFILES = (KEY_PROFILES - KEY_PROFILES.mean(1, keepdims=True)) / KEY_PROFILES.std(1, keepdims=True)
DUR_BINS = np.array([1, 2, 3, 5, 9, 17])  # lower edges: 1, 2, 3-4, 5-8, 9-16, 17+ steps
MELODIC_MAX = 13  # |interval| bins 0..12 and > 12 semitones
REGISTER_BANDS = 8
POLY_MAX = 6  # polyphony bins 0..5 and 6+
# The feature vector, group by group (name, width), in order. Only `register` and `pitch_mean_std` change when a
# window is transposed (tests/test_fidelity.py checks it).
FEATURE_GROUPS = (("key_chroma", 12), ("mode", 2), ("vertical_intervals", 7), ("top_line_intervals", MELODIC_MAX + 1),
                  ("bass_line_intervals", MELODIC_MAX + 1), ("register", REGISTER_BANDS), ("pitch_mean_std", 2),
                  ("polyphony", POLY_MAX + 1), ("beat_position", STEPS_PER_BAR), ("density", 3),
                  ("note_length", len(DUR_BINS)), ("ioi", len(DUR_BINS)), ("range_pcs_scale", 3))
FEATURE_SLICES = {name: slice(sum(w for _, w in FEATURE_GROUPS[:i]), sum(w for _, w in FEATURE_GROUPS[: i + 1]))
                  for i, (name, _) in enumerate(FEATURE_GROUPS)}
NUM_FEATURES = sum(w for _, w in FEATURE_GROUPS)


class FidelityError(Exception):
    """Data, checkpoint or options that cannot be evaluated; the message says why."""


# ------------------------------------------------------------------------------------------------ features
def _voice_intervals(line: np.ndarray, onset_steps: np.ndarray) -> np.ndarray:
    """(MELODIC_MAX + 1,) histogram of |pitch steps| between consecutive onsets of a voice (top or bass line)."""
    p = line[onset_steps]
    d = np.minimum(np.abs(np.diff(p)), MELODIC_MAX)
    h = np.bincount(d, minlength=MELODIC_MAX + 1).astype(float)
    return h / h.sum() if h.sum() else h


def window_features(roll: np.ndarray, cfg: ReprConfig) -> np.ndarray:
    """Roll (T, N, 3) -> (NUM_FEATURES,) float32 of pitch/onset/duration statistics; never the volume channel."""
    t_len, n = roll.shape[:2]
    play = roll[..., PLAY] > 0.5  # (T, N)
    notes = roll_to_notes(roll, cfg)
    f = []
    pc_of = (cfg.min_pitch + np.arange(n)) % PITCH_CLASSES  # (N,) pitch class of each note column
    pc_onehot = np.eye(PITCH_CLASSES)[pc_of]  # (N, 12)
    per_step_pc = play.astype(float) @ pc_onehot  # (T, 12): sounding notes per pitch class
    chroma = per_step_pc.sum(0)  # duration-weighted
    # Key-relative pitch classes: rotate so the best-correlating Krumhansl-Kessler key's tonic comes first.
    if chroma.sum() > 0 and chroma.std() > 0:
        z = (chroma - chroma.mean()) / chroma.std()
        corr = (KEY_PROFILES @ z / PITCH_CLASSES).reshape(2, PITCH_CLASSES)  # (2 modes, 12 tonics): Pearson r
        mode, tonic = np.unravel_index(np.argmax(corr), corr.shape)
        f += [np.roll(chroma, -tonic) / chroma.sum(), [float(mode), float(corr[mode, tonic])]]
    else:
        f += [chroma / max(chroma.sum(), 1.0), [0.0, 0.0]]
    # Vertical interval classes 0..6 of simultaneously sounding notes.
    pairs = [(per_step_pc * (per_step_pc - 1) / 2).sum()]
    pairs += [(per_step_pc * np.roll(per_step_pc, -k, axis=1)).sum() for k in range(1, 6)]
    pairs += [(per_step_pc * np.roll(per_step_pc, -6, axis=1)).sum() / 2]
    pairs = np.array(pairs)
    f.append(pairs / pairs.sum() if pairs.sum() else pairs)
    # Top and bass lines: the highest / lowest sounding note per step, intervals between their onsets.
    sounding = play.any(1)  # (T,)
    top = np.where(sounding, n - 1 - np.argmax(play[:, ::-1], axis=1), -1)
    bass = np.where(sounding, np.argmax(play, axis=1), -1)
    onset = np.zeros_like(play)
    if len(notes):
        onset[notes["start"].astype(np.int64), notes["pitch"].astype(np.int64) - cfg.min_pitch] = True
    steps_idx = np.arange(t_len)
    for line in (top, bass):
        f.append(_voice_intervals(line, steps_idx[sounding & onset[steps_idx, np.maximum(line, 0)]]))
    # Register: duration-weighted histogram over equal bands of the range, mean and spread of sounding pitch.
    col = np.nonzero(play)[1]
    band = np.bincount(col * REGISTER_BANDS // n, minlength=REGISTER_BANDS).astype(float)
    f += [band / max(band.sum(), 1.0), [col.mean() / n, col.std() / n] if len(col) else [0.0, 0.0]]
    # Texture: polyphony histogram over steps.
    poly = np.bincount(np.minimum(play.sum(1), POLY_MAX), minlength=POLY_MAX + 1).astype(float)
    f.append(poly / t_len)
    # Rhythm: onsets per position in the bar, density, onset steps, chords struck together.
    starts = notes["start"].astype(np.int64)
    beat = np.bincount(starts % STEPS_PER_BAR, minlength=STEPS_PER_BAR).astype(float)
    f.append(beat / max(beat.sum(), 1.0))
    per_onset_step = np.bincount(starts, minlength=t_len)
    struck = per_onset_step[per_onset_step > 0]
    f.append([np.log1p(len(notes) * STEPS_PER_BAR / t_len), len(struck) / t_len,
              float((struck >= 2).mean()) if len(struck) else 0.0])
    # Note lengths and inter-onset intervals, in duration bins.
    for values in (notes["end"].astype(np.int64) - starts, np.diff(np.unique(starts))):
        h = np.bincount(np.searchsorted(DUR_BINS, values, side="right") - 1, minlength=len(DUR_BINS)).astype(float)
        f.append(h / h.sum() if h.sum() else h)
    # Range, pitch classes used, and scale consistency (as in deepj.musicstats).
    if len(notes):
        hist = np.bincount(notes["pitch"].astype(np.int64) % PITCH_CLASSES, minlength=PITCH_CLASSES)
        scale = max(hist[[(t + d) % 12 for d in (0, 2, 4, 5, 7, 9, 11)]].sum() for t in range(12)) / len(notes)
        f.append([(int(notes["pitch"].max()) - int(notes["pitch"].min())) / n, (hist > 0).sum() / 12, scale])
    else:
        f.append([0.0, 0.0, 0.0])
    out = np.concatenate([np.asarray(x, dtype=float).ravel() for x in f]).astype(np.float32)
    assert out.shape == (NUM_FEATURES,), out.shape
    return out


# ------------------------------------------------------------------------------------------------ classifier
class StyleClassifier(nn.Module):
    """Standardised features -> MLP (one hidden layer; `hidden=0`: softmax regression) -> class logits."""

    def __init__(self, classes: list[str], num_features: int = NUM_FEATURES, hidden: int = 64, dropout: float = 0.2):
        super().__init__()
        self.classes = list(classes)
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        c = len(self.classes)
        self.net = (nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, c))
                    if hidden else nn.Linear(num_features, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)  # (B, C) logits

    def fit(self, x: np.ndarray, y: np.ndarray, *, epochs: int = 300, lr: float = 3e-3, weight_decay: float = 1e-3,
            seed: int = 0) -> "StyleClassifier":
        """Full-batch AdamW on class-balanced cross-entropy (styles have very different numbers of windows)."""
        if len(np.unique(y)) < 2:
            raise FidelityError(f"the classifier needs windows of at least 2 styles, got {len(np.unique(y))}")
        with one_thread():
            return self._fit(x, y, epochs, lr, weight_decay, seed)

    def _fit(self, x, y, epochs, lr, weight_decay, seed) -> "StyleClassifier":
        torch.manual_seed(seed)
        xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).long()
        self.mean.copy_(xt.mean(0))
        self.std.copy_(xt.std(0).clamp_min(1e-3))  # a constant feature must not blow up
        counts = torch.bincount(yt, minlength=len(self.classes)).float()
        weight = torch.where(counts > 0, counts.sum() / (len(self.classes) * counts.clamp_min(1)), 0.0)
        opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        loss_fn = nn.CrossEntropyLoss(weight=weight)
        self.train()
        for _ in range(epochs):
            opt.zero_grad()
            loss_fn(self(xt), yt).backward()
            opt.step()
        return self.eval()

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        with one_thread():
            return torch.softmax(self(torch.from_numpy(x).float()), -1).numpy()


@contextmanager
def one_thread():
    """Ops this small run fastest on one thread, and a second thread on a busy machine costs seconds per call."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ real windows
@dataclass
class Windows:
    """Real windows of one split: features, leaf style ids, and their notes (for statistics and examples)."""

    features: list[np.ndarray] = field(default_factory=list)
    style: list[int] = field(default_factory=list)
    notes: list[np.ndarray] = field(default_factory=list)
    short: int = 0  # windows left out because the piece ended inside them

    def x(self) -> np.ndarray:
        return np.stack(self.features) if self.features else np.zeros((0, NUM_FEATURES), dtype=np.float32)

    def y(self) -> np.ndarray:
        return np.asarray(self.style, dtype=np.int64)


def real_windows(data_dir: str | Path, split: str, window: int, *, transpose: int, max_per_style: int,
                 seed: int) -> Windows:
    """Full windows of `window` steps starting at bar lines, at most `max_per_style` per leaf style, drawn in a
    seeded random order (train: transposed up to +-`transpose` semitones, as the generator was trained)."""
    manifest = read_manifest(data_dir)
    if not any(s["split"] == split for s in manifest["shards"]):
        have = sorted({s["split"] for s in manifest["shards"]})
        raise FidelityError(f"{data_dir}: no shards for split {split!r} (have: {', '.join(have) or 'none'})")
    rep = manifest["representation"]
    rcfg = ReprConfig(rep["min_pitch"], rep["max_pitch"])
    steps = np.array([t for s in manifest["shards"] if s["split"] == split for t in s["piece_steps"]], dtype=np.int64)
    cfg = DataConfig(dir=str(data_dir), seq_len=window, stride=STEPS_PER_BAR, transpose=transpose, workers=0)
    probe = StreamingLoader(cfg, split, micro_batch=1, global_batch=1, shuffle=False, augment=False)
    if probe.total_windows == 0:
        raise FidelityError(f"{data_dir}: the {split} split holds no pieces")
    # Batches of a divisor of the window count: the loader drops an epoch's tail of less than one batch.
    batch = max(d for d in range(1, min(32, probe.total_windows) + 1) if probe.total_windows % d == 0)
    loader = StreamingLoader(cfg, split, micro_batch=batch, global_batch=batch, seed=seed, shuffle=True,
                             augment=transpose > 0)
    out, taken = Windows(), np.zeros(len(manifest["styles"]), dtype=np.int64)
    for b in loader:
        piece, start = b["window"][:, 0].numpy(), b["window"][:, 1].numpy()
        style = b["style"].argmax(1).numpy()
        rolls = b["target"].numpy()  # (B, W, N, 3): steps [start, start + W) of each window
        for j in range(len(piece)):
            if steps[piece[j]] - start[j] < window:
                out.short += 1
            elif taken[style[j]] < max_per_style:
                taken[style[j]] += 1
                out.features.append(window_features(rolls[j], rcfg))
                out.style.append(int(style[j]))
                out.notes.append(roll_to_notes(rolls[j], rcfg))
        if (taken >= max_per_style).all():
            break
    if not out.features:
        raise FidelityError(f"{data_dir}: no piece of the {split} split is {window} steps ({window // STEPS_PER_BAR} "
                            "bars) long; lower --bars")
    return out


# ------------------------------------------------------------------------------------------------ levels
def level_labels(styles: list[str], level: str) -> tuple[list[str], np.ndarray]:
    """Class names of a level and (S,) the class of each leaf style: periods = first path component."""
    names = [s.split("/")[0] for s in styles] if level == "period" else list(styles)
    classes = list(dict.fromkeys(names))
    return classes, np.array([classes.index(n) for n in names], dtype=np.int64)


def confusion(true: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    m = np.zeros((c, c), dtype=np.int64)
    np.add.at(m, (true, pred), 1)
    return m


def accuracy_block(true: np.ndarray, prob: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class recall and the confusion matrix (rows: true / requested class)."""
    pred = prob.argmax(1) if len(prob) else np.zeros(0, dtype=np.int64)
    cm = confusion(true, pred, len(classes))
    support = cm.sum(1)
    recall = {c: (float(cm[i, i] / support[i]) if support[i] else None) for i, c in enumerate(classes)}
    present = [v for v in recall.values() if v is not None]
    return {"n": int(len(true)), "accuracy": float((pred == true).mean()) if len(true) else None,
            "balanced_accuracy": float(np.mean(present)) if present else None, "recall": recall,
            "support": {c: int(s) for c, s in zip(classes, support)},
            "mean_prob_true": {c: (float(prob[true == i, i].mean()) if support[i] else None)
                               for i, c in enumerate(classes)},
            # P(c) on the other classes' items: against mean_prob_true it shows whether asking for c moves P(c).
            "mean_prob_others": {c: (float(prob[true != i, i].mean()) if (true != i).any() else None)
                                 for i, c in enumerate(classes)},
            "confusion": cm.tolist()}


def shift_corrected(x_gen: np.ndarray, y_gen: np.ndarray, x_real: np.ndarray, y_real: np.ndarray) -> np.ndarray:
    """A diagnostic, not the fidelity: generated features moved by (real centre - generated centre), each centre the
    mean of its per-class means. It removes an offset that all generated pieces share (an under-trained model's
    sparse texture, say), so what is left to classify is how the requested styles differ from each other."""
    gen_centre = np.mean([x_gen[y_gen == c].mean(0) for c in np.unique(y_gen)], axis=0)
    real_centre = np.mean([x_real[y_real == c].mean(0) for c in np.unique(y_gen) if (y_real == c).any()], axis=0)
    return (x_gen - gen_centre + real_centre).astype(np.float32)


# ------------------------------------------------------------------------------------------------ generation
def generate_rolls(model, vectors: torch.Tensor, num: int, steps: int, *, temperature: float, seed: int,
                   device: str, lead: int = 0, silence_redraws: int = SampleConfig.silence_redraws,
                   chunk: int = 128) -> np.ndarray:
    """(K, S) style vectors -> (K, num, steps, N, 3) rolls: `num` pieces per vector, generated in batches; each
    piece is `lead` + `steps` steps long and the last `steps` are returned."""
    from deepj.sampling import generate

    style = vectors.repeat_interleave(num, dim=0)  # (K * num, S)
    gen = torch.Generator(device=device).manual_seed(seed)
    cfg = SampleConfig(steps=lead + steps, temperature=temperature, silence_redraws=silence_redraws)
    # One CPU thread: sampling is a long chain of small ops; on a shared 2-core machine a second thread made it
    # ~100x slower (261 s against 1.8 s for 32 pieces), and alone it gains little.
    with one_thread() if device == "cpu" else nullcontext():
        rolls = [generate(model, style[i : i + chunk].to(device), cfg, gen)[:, lead:].numpy()
                 for i in range(0, len(style), chunk)]
    out = np.concatenate(rolls)
    return out.reshape(len(vectors), num, *out.shape[1:])


def resolve_leaf(name: str, styles: list[str], levels: dict) -> str | None:
    """A composer name (`bach`) or leaf (`baroque/bach`) -> its leaf style, if it names exactly one leaf."""
    ids = levels.get(name.strip().lower())
    return styles[ids[0]] if ids and len(ids) == 1 else None


def blend_level(a: str, b: str, manifest: dict) -> tuple[str, str, str]:
    """Which classifier judges a blend of A and B: both periods -> period, both leaves -> composer."""
    periods = top_level_names(manifest["styles"], manifest["levels"])
    a, b = a.strip().lower(), b.strip().lower()
    if a in periods and b in periods:
        return "period", a, b
    la, lb = resolve_leaf(a, manifest["styles"], manifest["levels"]), resolve_leaf(b, manifest["styles"],
                                                                                    manifest["levels"])
    if la and lb and a not in periods and b not in periods:
        return "composer", la, lb
    raise FidelityError(f"--blend {a},{b}: name two periods ({', '.join(periods)}) or two composers "
                        f"({', '.join(manifest['styles'])})")


# ------------------------------------------------------------------------------------------------ the evaluation
def check_compatible(shared: dict, manifest: dict, data_dir) -> None:
    rep, ck = manifest["representation"], shared["representation"]
    if (rep["min_pitch"], rep["max_pitch"]) != (ck["min_pitch"], ck["max_pitch"]):
        raise FidelityError(f"refusing: the checkpoint models MIDI pitches [{ck['min_pitch']}, {ck['max_pitch']}), "
                            f"the shards in {data_dir} hold [{rep['min_pitch']}, {rep['max_pitch']}): the classifier "
                            "must see the same range for real and generated music")
    missing = [s for s in manifest["styles"] if s not in shared["styles"]]
    if missing:
        raise FidelityError(f"the shards hold style(s) the checkpoint was not trained with: {', '.join(missing)}")


def run_fidelity(path: str | Path, data_dir: str | Path, *, levels=("period",), num: int = 20, bars: int = 0,
                 seed: int = 0, blend: tuple[str, str] | None = None, out: str | Path | None = None,
                 temperature: float = 1.0, max_windows: int = 1500, listen: int = 2, audio: bool = True,
                 lead_bars: int = 0, silence_redraws: int = SampleConfig.silence_redraws, device: str = "cpu",
                 log=print) -> dict:
    """The whole evaluation (see the module docstring); writes the report files and returns the report dict."""
    from deepj import musicstats
    from deepj.generate import load_for_inference
    from deepj.listening import write_report

    t0 = time.time()
    if num < 1 or bars < 0 or max_windows < 1 or listen < 0 or lead_bars < 0 or silence_redraws < 0:
        raise FidelityError("--num and --max-windows must be >= 1, --bars, --lead-bars, --listen and "
                            "--silence-redraws >= 0")
    lead = lead_bars * STEPS_PER_BAR
    manifest = read_manifest(data_dir)
    model, shared, ckpt = load_for_inference(path, device)
    check_compatible(shared, manifest, data_dir)
    rcfg = ReprConfig(manifest["representation"]["min_pitch"], manifest["representation"]["max_pitch"])
    data_cfg = shared["config"].get("data", {})
    bars = bars or max(1, int(data_cfg.get("seq_len", 64)) // STEPS_PER_BAR)
    window = bars * STEPS_PER_BAR
    transpose = int(data_cfg.get("transpose", 0))
    log(f"{ckpt} (step {shared['step']}): windows of {bars} bars"
        + (f" (generated: the last {bars} of {lead_bars + bars} bars)" if lead_bars else "")
        + f"; classifier training windows transposed up to +-{transpose} semitones as in training")

    train = real_windows(data_dir, "train", window, transpose=transpose, max_per_style=max_windows, seed=seed)
    val = real_windows(data_dir, "val", window, transpose=0, max_per_style=max_windows, seed=seed)
    log(f"real windows: train {len(train.style)} (left out {train.short} shorter than {window} steps), "
        f"val {len(val.style)} ({time.time() - t0:.0f} s)")
    styles = manifest["styles"]
    report = {"checkpoint": str(ckpt), "step": int(shared["step"]), "data": str(data_dir), "bars": bars,
              "window_steps": window, "lead_bars": lead_bars, "num": num, "seed": seed, "temperature": temperature,
              "silence_redraws": silence_redraws,
              "train_transpose": transpose, "styles": list(styles), "pitch_range": [rcfg.min_pitch, rcfg.max_pitch],
              "real_windows": {"train": len(train.style), "val": len(val.style), "train_short": train.short,
                               "val_short": val.short}, "levels": {}}
    clfs, pieces = {}, {}  # per level: the classifier; what the report files need (rolls, real notes, stat sets)
    for level in levels:
        classes, leaf_class = level_labels(styles, level)
        if level == "composer" and classes == level_labels(styles, "period")[0]:
            log("composer level: the style tree has one level only; it equals the period level, skipped")
            continue
        ytr, yva = leaf_class[train.y()], leaf_class[val.y()]
        t1 = time.time()
        clf = StyleClassifier(classes).fit(train.x(), ytr, seed=seed)
        fit_s = time.time() - t1
        real = accuracy_block(yva, clf.predict_proba(val.x()), classes)
        # Generate for every class the classifier knows and the checkpoint can condition on.
        names = [c for c in classes if c in shared["levels"]]
        vectors = torch.stack([style_vector([c], shared["styles"], shared["levels"]) for c in names])
        t1 = time.time()
        rolls = generate_rolls(model, vectors, num, window, temperature=temperature, seed=seed, device=device,
                               lead=lead, silence_redraws=silence_redraws)
        gen_s = time.time() - t1
        x = np.stack([window_features(r, rcfg) for r in rolls.reshape(-1, *rolls.shape[2:])])
        true = np.repeat([classes.index(c) for c in names], num)
        generated = accuracy_block(true, clf.predict_proba(x), classes)
        shifted = accuracy_block(true, clf.predict_proba(shift_corrected(x, true, train.x(), ytr)), classes)
        stats, real_notes, sets = {}, {}, {}
        for i, c in enumerate(names):
            real_notes[c] = [nt for nt, k in zip(val.notes, yva) if k == classes.index(c)]
            sets[c] = (musicstats.collect((nt, window) for nt in real_notes[c]),
                       musicstats.collect((roll_to_notes(r, rcfg), window) for r in rolls[i]))
            stats[c] = {"real": sets[c][0].summary(), "generated": sets[c][1].summary(),
                        "oa": musicstats.compare(*sets[c])}
        silent = int((rolls[..., PLAY].reshape(len(names) * num, -1).max(1) < 0.5).sum())
        report["levels"][level] = {"classes": classes, "chance": 1.0 / len(classes), "classifier_fit_s": fit_s,
                                   "generate_s": gen_s, "train_windows": {c: int((ytr == i).sum())
                                                                          for i, c in enumerate(classes)},
                                   "real_val": real, "generated": generated, "generated_shift_corrected": shifted,
                                   "generated_styles": names,
                                   "silent_generated_pieces": silent, "stats": stats}
        clfs[level], pieces[level] = clf, {"rolls": rolls, "real_notes": real_notes, "sets": sets}
        log(f"{level}: {len(classes)} classes (chance {1 / len(classes):.3f}); classifier fitted in {fit_s:.1f} s; "
            f"real val accuracy {real['accuracy']:.3f} (balanced {real['balanced_accuracy']:.3f}); generated "
            f"{generated['accuracy']:.3f} over {len(true)} pieces ({gen_s:.0f} s to generate); shift-corrected "
            f"{shifted['accuracy']:.3f}")
        for c in names:
            log(f"  {c:<24} real {fmt(real['recall'][c])}  generated {fmt(generated['recall'][c])}  "
                f"P({c.split('/')[-1]}): asked {fmt(generated['mean_prob_true'][c])}, others "
                f"{fmt(generated['mean_prob_others'][c])}")
    if blend:
        level, a, b = blend_level(blend[0], blend[1], manifest)
        if level not in clfs:
            raise FidelityError(f"--blend {a},{b} needs --level {level} (or both)")
        clf = clfs[level]
        ia, ib = clf.classes.index(a), clf.classes.index(b)
        vectors = torch.stack([style_vector([f"{a}={w}", f"{b}={1 - w}"], shared["styles"], shared["levels"])
                               for w in BLEND_WEIGHTS])
        rolls = generate_rolls(model, vectors, num, window, temperature=temperature, seed=seed + 1, device=device,
                               lead=lead, silence_redraws=silence_redraws)
        rows = []
        for w, rs in zip(BLEND_WEIGHTS, rolls):
            p = clf.predict_proba(np.stack([window_features(r, rcfg) for r in rs]))
            rows.append({"w": w, "p_a": float(p[:, ia].mean()), "p_a_std": float(p[:, ia].std()),
                         "p_b": float(p[:, ib].mean()),
                         "p_a_of_ab": float((p[:, ia] / np.maximum(p[:, ia] + p[:, ib], 1e-12)).mean()),
                         "frac_a": float((p.argmax(1) == ia).mean()), "frac_b": float((p.argmax(1) == ib).mean())})
            log(f"blend w={w:.2f}*{a} + {1 - w:.2f}*{b}: P({a}) {rows[-1]['p_a']:.3f}, P({b}) {rows[-1]['p_b']:.3f}")
        report["blend"] = {"a": a, "b": b, "level": level, "rows": rows}
        pieces["blend"] = rolls
    report["seconds"] = round(time.time() - t0, 1)
    out = Path(out) if out else ckpt.parent / "eval"
    write_report(report, out, pieces, rcfg, listen=listen, audio=audio, log=log)
    return report


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m deepj.fidelity", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a run folder (its newest complete checkpoint) or a step-NNNNNNNN folder")
    p.add_argument("--data", required=True, help="the preprocessed shard folder the run was trained on")
    p.add_argument("--num", type=int, default=20, help="generated pieces per style")
    p.add_argument("--bars", type=int, default=0, help="window length in bars; 0 = the checkpoint's data.seq_len")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--level", choices=["period", "composer", "both"], default="period")
    p.add_argument("--blend", metavar="A,B", help="two periods (or two composers): P(A) against the blend weight")
    p.add_argument("--out", help="output folder (default: <run>/eval)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lead-bars", type=int, default=0,
                   help="generate this many bars more and classify the last window of each piece (0: from its start)")
    p.add_argument("--silence-redraws", type=int, default=SampleConfig.silence_redraws, metavar="K",
                   help=f"redraw a step that would begin a silence up to K times (default {SampleConfig.silence_redraws}; "
                        "0 = the paper's sampler)")
    p.add_argument("--max-windows", type=int, default=1500, help="real windows per leaf style and split, at most")
    p.add_argument("--listen", type=int, default=2, help="pieces per style on the listening page")
    p.add_argument("--no-audio", action="store_true", help="no WAV files, even where FluidSynth is installed")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    blend = None
    if args.blend:
        blend = tuple(s for s in args.blend.split(",") if s.strip())
        if len(blend) != 2:
            print(f"error: --blend wants two style names separated by a comma, got {args.blend!r}", file=sys.stderr)
            return 2
    levels = LEVELS if args.level == "both" else (args.level,)
    try:
        run_fidelity(args.checkpoint, args.data, levels=levels, num=args.num, bars=args.bars, seed=args.seed,
                     blend=blend, out=args.out, temperature=args.temperature, max_windows=args.max_windows,
                     listen=args.listen, audio=not args.no_audio, lead_bars=args.lead_bars,
                     silence_redraws=args.silence_redraws, device=args.device)
    except (checkpoint.CheckpointError, ShardError, FidelityError, StyleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
