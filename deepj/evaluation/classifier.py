"""The style classifier of the fidelity evaluation (`deepj.fidelity`): musical features of a window of piano roll,
a small classifier over them, and the accuracy bookkeeping.

`window_features` sees only what real and generated music share: the play and onset structure of the roll, never the
volume channel (the corpus' velocities come from score dynamics; the generator's volume head is smoother), and pitch
classes relative to the window's estimated key (Krumhansl-Kessler), because the generator was trained on randomly
transposed windows and keys are not what distinguishes the styles. Only the `register` and `pitch_mean_std` groups
change when a window is transposed (tests/test_fidelity.py checks it).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from deepj.music.constants import PITCH_CLASSES, PLAY, STEPS_PER_BAR
from deepj.music.representation import ReprConfig, roll_to_notes

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
    # Range, pitch classes used, and scale consistency (as in deepj.evaluation.musicstats).
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
            seed: int = 0) -> StyleClassifier:
        """Full-batch AdamW on class-balanced cross-entropy (styles have very different numbers of windows)."""
        if len(np.unique(y)) < 2:
            raise FidelityError(f"the classifier needs windows of at least 2 styles, got {len(np.unique(y))}")
        with one_thread():
            return self._fit(x, y, epochs, lr, weight_decay, seed)

    def _fit(self, x, y, epochs, lr, weight_decay, seed) -> StyleClassifier:
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

