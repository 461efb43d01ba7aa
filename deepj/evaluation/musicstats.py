"""MGEval-style statistics of music (Yang & Lerch 2018), per piece and per set, and how well two sets overlap.

Every statistic is computed from canonical grid notes (`representation.NOTE_DTYPE`, 16th-note steps) and the piece's
length in steps, so real windows and generated rolls go through the same code (`roll_stats` converts a roll with
`roll_to_notes`). Definitions (a "note" is one grid note, counted once at its onset; "sounding" = start <= t < end):

- pitch-class histogram: notes per pitch class (MIDI pitch % 12, C = 0), divided by the number of notes;
- pitch range: highest minus lowest MIDI pitch, in semitones;
- polyphony: mean number of sounding notes over the steps where at least one note sounds;
- note density: notes per bar (16 steps);
- inter-onset intervals (IOI): steps between consecutive distinct onset times;
- note lengths: end - start, in steps;
- empty-bar rate: fraction of the piece's bars (ceil(steps / 16)) in which no note sounds;
- scale consistency: the largest fraction of notes whose pitch class lies in one major scale (12 candidates; the
  natural minor scales are the same sets), as in Mogren's C-RNN-GAN.
A statistic that is undefined on a piece (the range of a piece without notes) is NaN and left out of its set.

Comparing sets: for each scalar statistic the overlapped area OA = integral of min(p, q) of the two sets' densities,
each a Gaussian kernel density estimate (Scott's bandwidth) evaluated on ONE common grid that spans both sets
(MGEval's own KL code compares densities on different grids; we do not). Pooled distributions (pitch classes, IOIs,
note lengths) are compared as histograms on common bins: OA = sum of min(p_i, q_i). OA is 1 for identical sets and 0
for disjoint ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deepj.music.constants import PITCH_CLASSES, STEPS_PER_BAR
from deepj.music.representation import ReprConfig, roll_to_notes

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)  # semitones above the tonic
# Scalar statistics, per piece (the OA of each is computed with a KDE).
SCALARS = ("pitch_range", "polyphony", "note_density", "mean_ioi", "mean_note_length", "empty_bar_rate",
           "scale_consistency")
# Pooled distributions over all notes of a set, compared on common bins.
MAX_STEPS_BIN = 32  # IOI and note-length histograms: one bin per step 1..32, plus one bin for longer
HISTOGRAMS = ("pitch_class", "ioi", "note_length")
GRID_POINTS = 512  # KDE grid resolution


# ------------------------------------------------------------------------------------------------ per piece
def pitch_class_histogram(notes: np.ndarray) -> np.ndarray:
    """(12,) fraction of notes per pitch class; all zeros for a piece without notes."""
    counts = np.bincount(notes["pitch"].astype(np.int64) % PITCH_CLASSES, minlength=PITCH_CLASSES).astype(float)
    return counts / counts.sum() if len(notes) else counts


def pitch_range(notes: np.ndarray) -> float:
    return float(int(notes["pitch"].max()) - int(notes["pitch"].min())) if len(notes) else float("nan")


def sounding_counts(notes: np.ndarray, steps: int) -> np.ndarray:
    """(steps,) number of notes sounding at each step (notes past `steps` are cut)."""
    delta = np.zeros(steps + 1, dtype=np.int64)
    start = np.minimum(notes["start"].astype(np.int64), steps)
    end = np.minimum(notes["end"].astype(np.int64), steps)
    np.add.at(delta, start, 1)
    np.add.at(delta, end, -1)
    return np.cumsum(delta)[:steps]


def polyphony(notes: np.ndarray, steps: int) -> float:
    c = sounding_counts(notes, steps)
    c = c[c > 0]
    return float(c.mean()) if len(c) else float("nan")


def note_density(notes: np.ndarray, steps: int) -> float:
    return len(notes) / (steps / STEPS_PER_BAR) if steps > 0 else float("nan")


def inter_onset_intervals(notes: np.ndarray) -> np.ndarray:
    return np.diff(np.unique(notes["start"].astype(np.int64)))


def note_lengths(notes: np.ndarray) -> np.ndarray:
    return notes["end"].astype(np.int64) - notes["start"].astype(np.int64)


def empty_bar_rate(notes: np.ndarray, steps: int) -> float:
    if steps <= 0:
        return float("nan")
    bars = -(-steps // STEPS_PER_BAR)
    sounding = np.zeros(bars * STEPS_PER_BAR, dtype=bool)
    sounding[:steps] = sounding_counts(notes, steps) > 0
    return float((~sounding.reshape(bars, STEPS_PER_BAR).any(axis=1)).mean())


def scale_consistency(notes: np.ndarray) -> float:
    if not len(notes):
        return float("nan")
    hist = np.bincount(notes["pitch"].astype(np.int64) % PITCH_CLASSES, minlength=PITCH_CLASSES)
    in_scale = [hist[[(tonic + d) % PITCH_CLASSES for d in MAJOR_SCALE]].sum() for tonic in range(PITCH_CLASSES)]
    return float(max(in_scale) / len(notes))


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def piece_stats(notes: np.ndarray, steps: int) -> dict:
    """All statistics of one piece: the SCALARS as floats, and `pitch_class` (12 counts), `ioi`, `note_length`."""
    ioi, lengths = inter_onset_intervals(notes), note_lengths(notes)
    return {
        "pitch_range": pitch_range(notes),
        "polyphony": polyphony(notes, steps),
        "note_density": note_density(notes, steps),
        "mean_ioi": _mean(ioi),
        "mean_note_length": _mean(lengths),
        "empty_bar_rate": empty_bar_rate(notes, steps),
        "scale_consistency": scale_consistency(notes),
        "pitch_class": np.bincount(notes["pitch"].astype(np.int64) % PITCH_CLASSES, minlength=PITCH_CLASSES),
        "ioi": ioi,
        "note_length": lengths,
    }


def roll_stats(roll: np.ndarray, cfg: ReprConfig) -> dict:
    """Statistics of a roll (T, N, 3): its notes as `roll_to_notes` reads them, over its T steps."""
    return piece_stats(roll_to_notes(roll, cfg), roll.shape[0])


# ------------------------------------------------------------------------------------------------ per set
@dataclass
class StatSet:
    """The statistics of a set of pieces: one value per piece for each scalar, pooled counts for the histograms."""

    scalars: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in SCALARS})
    pitch_class: np.ndarray = field(default_factory=lambda: np.zeros(PITCH_CLASSES))
    ioi: np.ndarray = field(default_factory=lambda: np.zeros(MAX_STEPS_BIN + 1))  # bins 1..32 and > 32
    note_length: np.ndarray = field(default_factory=lambda: np.zeros(MAX_STEPS_BIN + 1))
    pieces: int = 0

    def add(self, stats: dict) -> None:
        for k in SCALARS:
            self.scalars[k].append(stats[k])
        self.pitch_class += stats["pitch_class"]
        self.ioi += step_histogram(stats["ioi"])
        self.note_length += step_histogram(stats["note_length"])
        self.pieces += 1

    def values(self, key: str) -> np.ndarray:
        """The defined (non-NaN) per-piece values of a scalar statistic."""
        x = np.asarray(self.scalars[key], dtype=float)
        return x[~np.isnan(x)]

    def histogram(self, key: str) -> np.ndarray:
        h = getattr(self, key).astype(float)
        return h / h.sum() if h.sum() > 0 else h

    def summary(self) -> dict:
        out = {"pieces": self.pieces}
        for k in SCALARS:
            v = self.values(k)
            out[k] = {"mean": float(v.mean()) if len(v) else None, "std": float(v.std()) if len(v) else None,
                      "n": int(len(v))}
        for k in HISTOGRAMS:
            out[k + "_histogram"] = self.histogram(k).round(5).tolist()
        return out


def step_histogram(values: np.ndarray) -> np.ndarray:
    """Step counts -> (33,) histogram: bin i holds value i + 1 for i < 32, the last bin everything longer."""
    v = np.clip(np.asarray(values, dtype=np.int64), 1, MAX_STEPS_BIN + 1) - 1
    return np.bincount(v, minlength=MAX_STEPS_BIN + 1).astype(float)


def collect(pieces) -> StatSet:
    """(notes, steps) pairs -> StatSet."""
    s = StatSet()
    for notes, steps in pieces:
        s.add(piece_stats(notes, steps))
    return s


# ------------------------------------------------------------------------------------------------ overlap
def scott_bandwidth(x: np.ndarray) -> float:
    """Scott's rule for a 1-D Gaussian KDE (scipy's default): std * n^(-1/5); 0 for fewer than 2 distinct values."""
    return float(x.std(ddof=1) * len(x) ** -0.2) if len(x) > 1 and np.ptp(x) > 0 else 0.0


def kde_on_grid(x: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian KDE of x evaluated on `grid`, renormalised to integrate to 1 over the grid (trapezoid rule)."""
    z = (grid[:, None] - x[None, :]) / bandwidth  # (G, n)
    p = np.exp(-0.5 * z * z).sum(axis=1)
    area = np.trapezoid(p, grid)
    return p / area if area > 0 else p


def common_grid(a: np.ndarray, b: np.ndarray, points: int = GRID_POINTS) -> tuple[np.ndarray, float, float]:
    """One grid for both sets, and their bandwidths. A set with < 2 distinct values borrows the other set's
    bandwidth (the smoothing the data supports; the pooled set's would include the gap between the sets); if both
    are constant, each is a bump of width 1% of |value| (at least 1e-3)."""
    pooled = np.concatenate([a, b])
    ha, hb = scott_bandwidth(a), scott_bandwidth(b)
    floor = max(1e-2 * float(np.abs(pooled).max()), 1e-3)
    ha, hb = ha or hb or floor, hb or ha or floor
    pad = 4.0 * max(ha, hb)
    return np.linspace(pooled.min() - pad, pooled.max() + pad, points), ha, hb


def overlap_area(a, b, points: int = GRID_POINTS) -> float:
    """OA of two samples' KDEs on one common grid; NaN if either sample is empty. Two constant samples overlap
    fully if they hold the same value and not at all otherwise."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if not len(a) or not len(b):
        return float("nan")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return float(a[0] == b[0])
    grid, ha, hb = common_grid(a, b, points)
    p, q = kde_on_grid(a, grid, ha), kde_on_grid(b, grid, hb)
    return float(np.clip(np.trapezoid(np.minimum(p, q), grid), 0.0, 1.0))


def histogram_overlap(p, q) -> float:
    """OA of two histograms on the same bins (each normalised to sum 1): sum of min; NaN if either is empty."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.shape != q.shape:
        raise ValueError(f"musicstats.histogram_overlap: bins differ, {p.shape} vs {q.shape}")
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    return float(np.minimum(p / p.sum(), q / q.sum()).sum())


def compare(real: StatSet, gen: StatSet) -> dict:
    """Per statistic: OA of generated vs real, and both sets' means."""
    out = {}
    for k in SCALARS:
        r, g = real.values(k), gen.values(k)
        out[k] = {"oa": _num(overlap_area(r, g)), "real_mean": _num(_mean(r)), "generated_mean": _num(_mean(g))}
    for k in HISTOGRAMS:
        out[k] = {"oa": _num(histogram_overlap(getattr(real, k), getattr(gen, k)))}
    return out


def _num(x: float) -> float | None:
    """NaN -> None, for JSON."""
    return None if x != x else round(float(x), 5)


# ------------------------------------------------------------------------------------------------ figure
def plot_comparison(real: StatSet, gen: StatSet, title: str, path):
    """One figure per style: each scalar's two KDEs on their common grid, and the three pooled histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(SCALARS) + list(HISTOGRAMS)
    fig, axes = plt.subplots(2, 5, figsize=(16, 5.6))
    for ax, k in zip(axes.flat, keys):
        if k in SCALARS:
            r, g = real.values(k), gen.values(k)
            if len(r) and len(g):
                grid, hr, hg = common_grid(r, g)
                ax.plot(grid, kde_on_grid(r, grid, hr), label="real", color="tab:blue")
                ax.plot(grid, kde_on_grid(g, grid, hg), label="generated", color="tab:orange")
            oa = overlap_area(r, g)
        else:
            p, q = real.histogram(k), gen.histogram(k)
            x = np.arange(len(p)) + (0 if k == "pitch_class" else 1)
            ax.bar(x - 0.2, p, width=0.4, label="real", color="tab:blue")
            ax.bar(x + 0.2, q, width=0.4, label="generated", color="tab:orange")
            if k == "pitch_class":
                ax.set_xticks(range(12), ["C", "", "D", "", "E", "F", "", "G", "", "A", "", "B"])
            else:
                ax.set_xlim(0.3, 16.7)
                ax.set_xlabel("steps (16ths)")
            oa = histogram_overlap(p, q)
        ax.set_title(f"{k.replace('_', ' ')}  OA={oa:.2f}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes.flat[len(SCALARS)].legend(fontsize=7)  # the pitch-class bars are always drawn, with labels
    fig.suptitle(f"{title}: real ({real.pieces} windows) vs generated ({gen.pieces} pieces)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
