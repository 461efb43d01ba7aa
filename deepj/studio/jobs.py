"""One generation job of the studio: the page's form -> a `deepj.compose.Request` -> pieces -> files the page shows.

No web framework here: the page (deepj/studio/page.py) hands a `Form` to `Studio.run` and shows what comes back, and
tests drive `Studio.run` directly. Every refusal is a `RequestError` whose message names the field and the rule.
"""

from __future__ import annotations

import itertools
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepj.compose import MAX_BARS, MAX_PIECES, MAX_PRIMER_BARS, MAX_SEED, Piece, Request, RequestError, compose
from deepj.model import DeepJ
from deepj.music.constants import STEPS_PER_BAR
from deepj.music.midi_io import write_midi
from deepj.music.render import audio_available, render_wav, save_png
from deepj.music.styles import StyleTree, slug
from deepj.sampling import SampleConfig
from deepj.training.checkpoint import CheckpointMeta

# A browser's number holds integers exactly only up to 2**53: a larger seed typed on the page would arrive rounded.
MAX_PAGE_SEED = min(MAX_SEED, 2**53)
# Redraws multiply the sampler's work per step (1 + K draws of every note); the CLI leaves K open, a shared page
# bounds it like bars and pieces.
MAX_SILENCE_REDRAWS = 32
KEEP_JOBS = 16  # job folders kept on disk; the page holds its own copies of what it shows


def style_groups(tree: StyleTree) -> list[tuple[str, list[str]]]:
    """The sliders of a style tree: each top-level name (period) with the leaf styles under it ("period/composer"),
    in slot order. A flat tree (leaves without a period) gives each leaf with no children."""
    return [(top, [tree.styles[i] for i in tree.levels[top] if tree.styles[i] != top]) for top in tree.top_level()]


def slider_names(tree: StyleTree) -> list[str]:
    """Every style name the page has a slider for, in page order: a period, then the composers under it."""
    return [name for top, leaves in style_groups(tree) for name in (top, *leaves)]


def find_styles(tree: StyleTree, query: str) -> dict[str, bool]:
    """Which composer sliders a search shows, {leaf style: shown}: those whose name holds the query (case aside),
    every composer of a period whose name does, and all of them for an empty query."""
    q = query.strip().lower()
    return {leaf: q in leaf.lower() for _, leaves in style_groups(tree) for leaf in leaves}


def specs_from_weights(weights: dict[str, float], what: str = "style") -> list[str]:
    """Slider weights {name: weight} -> style specs ["baroque=0.5", "baroque/bach=1"], the zero ones left out; the
    weights are normalised later exactly as `--style` specs are (`StyleTree.vector`)."""
    specs = []
    for name, w in weights.items():
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise RequestError(f"{what} weight of {name!r} must be a finite number >= 0, got {w!r}")
        if w > 0:
            specs.append(f"{name}={w:g}")
    if not specs:
        raise RequestError(f"every {what} weight is zero: move at least one slider above zero")
    return specs


def describe_mix(specs: list[str]) -> str:
    """["baroque=1", "baroque/bach=3"] -> "baroque 25% + baroque/bach 75%" (the share each name gets)."""
    pairs = [s.rpartition("=")[::2] for s in specs]
    total = sum(float(w) for _, w in pairs)
    return " + ".join(f"{name} {float(w) / total:.0%}" for name, w in pairs)


def _int_in(value, lo: int, hi: int, what: str, why: str = "") -> int:
    """A page number (sliders and number boxes send floats) -> int in [lo, hi], else a RequestError naming `what`."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not (math.isfinite(x) and x == int(x) and lo <= x <= hi):
        raise RequestError(f"{what} must be a whole number in [{lo}, {hi}]{why}, got {value!r}")
    return int(x)


@dataclass
class Form:
    """What the page sends, as plain values (sliders arrive as floats, an upload as a file path or None)."""

    weights: dict[str, float]
    bars: float = 32
    pieces: float = 1
    temperature: float = 1.0
    seed: float = 0
    silence_redraws: float = SampleConfig.silence_redraws
    primer: str | None = None
    primer_all: bool = False  # read all of the primer; else its last `primer_bars` bars
    primer_bars: float = 8
    continuation_only: bool = False
    morph: bool = False
    morph_weights: dict[str, float] = field(default_factory=dict)
    morph_from: float = 1
    morph_to: float = 32

    def to_request(self) -> Request:
        """The compose Request, every value checked against the page's bounds (compose checks the primer itself)."""
        try:
            temperature = float(self.temperature)
        except (TypeError, ValueError):
            temperature = math.nan
        if not (math.isfinite(temperature) and temperature > 0):
            raise RequestError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        bars = _int_in(self.bars, 1, MAX_BARS, "bars")
        request = Request(
            styles=specs_from_weights(self.weights), bars=bars,
            num=_int_in(self.pieces, 1, MAX_PIECES, "pieces"), temperature=temperature,
            seed=_int_in(self.seed, 0, MAX_PAGE_SEED, "seed"),
            silence_redraws=_int_in(self.silence_redraws, 0, MAX_SILENCE_REDRAWS, "silence redraws"))
        if self.primer:
            request.primer = self.primer
            request.primer_bars = None if self.primer_all else _int_in(self.primer_bars, 1, MAX_PRIMER_BARS,
                                                                       "primer bars")
            request.continuation_only = bool(self.continuation_only)
        elif self.continuation_only:
            raise RequestError("'only the continuation' needs a primer: upload a MIDI file, or untick it")
        if self.morph:
            request.morph_to = specs_from_weights(self.morph_weights, "morph target")
            first = _int_in(self.morph_from, 1, bars, "morph from bar", " (the bars generated)")
            last = _int_in(self.morph_to, 1, bars, "morph to bar", " (the bars generated)")
            if last < first:
                raise RequestError(f"the morph runs from bar {first} to bar {last}: the second must not come first")
            request.morph_bars = (first, last)
        return request


@dataclass
class PieceFiles:
    """One piece as the page shows it."""

    midi: Path
    png: Path
    wav: Path | None
    caption: str


@dataclass
class Result:
    job: int
    request: Request
    pieces: list[PieceFiles]
    generate_s: float  # compose: all pieces together, as one batch
    render_s: float  # MIDI, pictures and audio of all pieces
    summary: str


def morph_span(styles: np.ndarray) -> tuple[int, int] | None:
    """Per-step style vectors (T, S) -> the steps [first, last) over which they change, or None when constant."""
    moving = np.flatnonzero(np.abs(np.diff(styles, axis=0)).sum(axis=1) > 1e-6)
    return (int(moving[0]), int(moving[-1]) + 2) if len(moving) else None


class Studio:
    """A loaded model and what the page needs around it. `run` is called by the page's queue one job at a time; the
    lock keeps it so should anything else call it meanwhile (the model's sampler is not re-entrant)."""

    def __init__(self, model: DeepJ, meta: CheckpointMeta, checkpoint: Path, out_dir: Path, device: str = "cpu"):
        self.model, self.meta, self.checkpoint, self.device = model, meta, checkpoint, device
        self.out_dir = Path(out_dir)
        self.audio, self.audio_why = audio_available()
        self._lock = threading.Lock()
        self._jobs = itertools.count(1)

    def run(self, form: Form, progress: Callable[[int, int], None] | None = None) -> Result:
        request = form.to_request()
        with self._lock:
            job = next(self._jobs)
            t0 = time.perf_counter()
            pieces = compose(self.model, self.meta, request, device=self.device, progress=progress)
            generate_s = time.perf_counter() - t0
            folder = self.out_dir / f"job-{job:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            files = [self._save(folder, request, p, i, len(pieces), generate_s) for i, p in enumerate(pieces)]
            render_s = time.perf_counter() - t0 - generate_s
            self._prune()
        summary = (f"Request #{job}: {len(pieces)} piece(s) of {request.bars} bars, {describe_mix(request.styles)}"
                   + (f", morphing to {describe_mix(request.morph_to)} over bars {request.morph_bars[0]}-"
                      f"{request.morph_bars[1]}" if request.morph_to else "")
                   + f"; generated in {generate_s:.1f} s, files in {render_s:.1f} s.")
        return Result(job, request, files, generate_s, render_s, summary)

    def _save(self, folder: Path, request: Request, piece: Piece, i: int, num: int, generate_s: float) -> PieceFiles:
        names = [spec.rpartition("=")[0] for spec in request.styles]
        stem = folder / f"{slug(names)}-seed{request.seed}-{i + 1}"
        midi = write_midi(piece.notes, stem.with_suffix(".mid"))
        morph = morph_span(piece.styles) if request.morph_to else None
        title = f"piece {i + 1}: {describe_mix(request.styles)}" + (
            f" -> {describe_mix(request.morph_to)}" if request.morph_to else "")
        png = save_png(piece.roll, stem.with_suffix(".png"), title, mark_step=piece.primer_steps or None, shade=morph)
        wav = render_wav(midi, stem.with_suffix(".wav")) if self.audio else None
        steps = piece.roll.shape[0]
        lines = [f"**Piece {i + 1} of {num}**: {steps / STEPS_PER_BAR:g} bars, {len(piece.notes)} notes; generated "
                 f"in {generate_s:.1f} s" + (f" (the {num} pieces together)" if num > 1 else "")]
        if piece.primer_steps:  # a primer ends where its last note ends: often mid-bar
            lines.append(f"primer: the first {piece.primer_steps / STEPS_PER_BAR:g} bars, up to the red line; then "
                         f"{request.bars} bars of the model's continuation")
        if morph is not None:
            first, last = request.morph_bars or (1, request.bars)
            lines.append(f"the style moves over bars {first}-{last} of the continuation (shaded)")
        return PieceFiles(midi, png, wav, "  \n".join(lines))

    def _prune(self) -> None:
        for old in sorted(self.out_dir.glob("job-*"))[:-KEEP_JOBS]:
            shutil.rmtree(old, ignore_errors=True)


def set_threads(device: str) -> None:
    """Sampling runs N tiny note-steps per step: on CPU more threads cost more than they give (deepj.generate does
    the same), and one core stays free for the web server."""
    if device == "cpu":
        torch.set_num_threads(1)
