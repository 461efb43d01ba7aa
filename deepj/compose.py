"""Music on request, for the CLI (`deepj.generate`) and the studio page alike: a style or blend, optionally moving into
another over the piece (a morph), optionally continuing a user's MIDI file (a primer).

`compose` checks every part of a request before it generates and raises `RequestError` naming the problem (and the
file); it never prints. The CLI and the page both call it, so one request (seed included) gives the same pieces in
both. The page's limits (MAX_BARS, MAX_PIECES) are `compose`'s defaults; the CLI lifts them (max_bars=None, ...).

Primer: read with the checkpoint's representation (pitch range and pedals: as its training shards were read). Whole
silent bars before its first note are dropped, and it ends where its last note ends (the model goes on from there,
mid-bar or not). `primer_bars` = K keeps its last K bars, bar lines counted from the file's start (16 steps each; the
bar its last note ends in counts as one), so the primer starts on a bar line and the beat input stays in step with the
file's bars. A primer may last at most MAX_PRIMER_BARS (a longer file needs primer_bars). The sampler takes it as the
piece's first steps (deepj/sampling.py): every piece of the request continues the same primer.

Morph: `styles` (A) and `morph_to` (B) are each normalised (`StyleTree.vector`). `morph_bars` = (first, last) are bar
numbers of the generated part, from 1, inclusive (default: 1 and `bars`, the whole generated part). Every step before
bar `first` has A, every step after bar `last` has B; across those bars step t of the generated part (from 0) has
(1 - w) A + w B with w = (t - t0) / (t1 - t0), t0 = 16 (first - 1) the first step of bar `first` and t1 = 16 last - 1
the last step of bar `last`, computed in float64 and stored as float32: linear per step, exactly A at t0 and exactly B
at t1 (first == last: a one-bar morph). The primer's steps have A.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepj.model import DeepJ
from deepj.music.constants import STEPS_PER_BAR
from deepj.music.midi_io import MidiError, read_midi
from deepj.music.representation import ReprConfig, notes_to_roll, roll_to_notes
from deepj.music.styles import StyleError
from deepj.sampling import MODES, SampleConfig, generate
from deepj.training.checkpoint import CheckpointMeta

MAX_BARS = 64  # bars one request may generate (the continuation only), on the page; the CLI sets no limit
MAX_PIECES = 8  # pieces per request, on the page; the CLI sets no limit
MAX_PRIMER_BARS = 64  # the longest primer used, page and CLI (longer: RequestError naming the limit and the length)
MAX_PRIMER_FILE_BARS = 4096  # the longest primer file read at all (about 2 hours at 120 bpm); its last bars are used
MAX_PRIMER_BYTES = 4 * 2**20  # a primer file's size cap: MIDI files are small (a 2-hour performance is about 1 MB)
MAX_SEED = 2**63 - 1  # torch's and numpy's generators both take seeds in [0, 2**63)


class RequestError(ValueError):
    """A bad request or primer; the message names the problem (and the file). `field` names the `Request` field at
    fault ("checkpoint" for `check_checkpoint`'s refusals, "" where none does), so that a page can point at its input
    and the CLI at its option."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


@dataclass
class Request:
    styles: list[str]  # style specs as --style takes them: "baroque", "chopin=0.3"
    bars: int = 32  # bars generated after the primer
    num: int = 1  # pieces, generated together as one batch
    temperature: float = 1.0
    seed: int = 0
    silence_redraws: int = SampleConfig.silence_redraws
    mode: str = "stateful"
    primer: str | Path | None = None  # a MIDI file the pieces continue
    primer_bars: int | None = None  # its last K bars (None: all of it, up to MAX_PRIMER_BARS)
    continuation_only: bool = False  # the pieces without the primer's bars
    morph_to: list[str] = field(default_factory=list)  # style specs the blend moves to
    morph_bars: tuple[int, int] | None = None  # (first, last) bars of the generated part, from 1, inclusive; None: all


@dataclass
class Piece:
    roll: np.ndarray  # (T, N, 3) float32: the primer's steps then the continuation, or the continuation only
    notes: np.ndarray  # grid notes of `roll` (representation.roll_to_notes)
    primer_steps: int  # steps of `roll` that are the primer (0 without one or with continuation_only)
    styles: np.ndarray  # (T, S) float32: the style vector of each step of `roll` (primer steps: the first style)


def check_checkpoint(meta: CheckpointMeta) -> None:
    """Refuse a checkpoint that cannot make music this way, before its weights are read: only a DeepJ trained by
    deepj.train (kind "train") can. A BL2012 benchmark model (kind "bl2012") plays the play channel only, over 88 keys
    of one placeholder style."""
    if meta.kind != "train":
        what = ("a BL2012 benchmark model (deepj.bench bl2012): it models note on/off only, without velocities, "
                "re-strikes or styles" if meta.kind == "bl2012" else "not written by deepj.train")
        raise RequestError(f"this checkpoint is of kind {meta.kind!r}, {what}; generating music needs a DeepJ "
                           "trained with deepj.train", "checkpoint")
    if meta.model.play_only:
        raise RequestError("this checkpoint's model is play-only (model.play_only): it models note on/off only, "
                           "without velocities or re-strikes; generating music needs a full DeepJ", "checkpoint")
    if meta.model.num_notes != meta.representation.num_notes or meta.model.num_styles != meta.styles.num_styles:
        raise RequestError(f"this checkpoint's metadata disagree: its model has {meta.model.num_notes} notes and "
                           f"{meta.model.num_styles} styles, its representation {meta.representation.num_notes} notes "
                           f"and its style list {meta.styles.num_styles} styles", "checkpoint")


# ------------------------------------------------------------------------------------------------ checks
def _whole(value, name: str, lo: int, hi: int | None = None) -> int:
    """`value` if it is an int in [lo, hi] (hi None: no upper bound), else a RequestError naming `name`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
        rule = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
        raise RequestError(f"{name} must be a whole number {rule}, got {value!r}", name)
    return value


def _specs(value, name: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        raise RequestError(f"{name} must be a list of style specs (\"baroque\", \"chopin=0.3\"), got {value!r}", name)
    return list(value)


def _check_plain(request: Request, max_bars: int | None, max_pieces: int | None) -> None:
    """What needs no checkpoint: numbers, limits, and which fields go together."""
    _specs(request.styles, "styles")
    _whole(request.bars, "bars", 1, max_bars)
    _whole(request.num, "num", 1, max_pieces)
    t = request.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise RequestError(f"temperature must be a finite number > 0, got {t!r}", "temperature")
    _whole(request.seed, "seed", 0, MAX_SEED)
    _whole(request.silence_redraws, "silence_redraws", 0)
    if request.mode not in MODES:
        raise RequestError(f"mode must be one of {', '.join(map(repr, MODES))}, got {request.mode!r}", "mode")
    if request.primer is None:
        for name in ("primer_bars", "continuation_only"):
            if getattr(request, name) not in (None, False):
                raise RequestError(f"{name} needs a primer (a MIDI file to continue)", name)
    elif not isinstance(request.primer, (str, os.PathLike)) or not str(request.primer):
        raise RequestError(f"primer must be the path of a MIDI file, got {request.primer!r}", "primer")
    if request.primer_bars is not None:
        _whole(request.primer_bars, "primer_bars", 1, MAX_PRIMER_BARS)
    if _specs(request.morph_to, "morph_to") and not request.styles:
        raise RequestError("morph_to needs styles to start from: the blend moves from styles to morph_to", "morph_to")
    _morph_bars(request)


def _morph_bars(request: Request) -> tuple[int, int] | None:
    """(first, last) bars of the morph, from 1, inclusive; None without a morph."""
    if not request.morph_to:
        if request.morph_bars is not None:
            raise RequestError("morph_bars needs morph_to (where the blend moves to)", "morph_bars")
        return None
    if request.morph_bars is None:
        return 1, request.bars
    pair = request.morph_bars
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)):
        raise RequestError(f"morph_bars must be two whole numbers (first, last), got {pair!r}", "morph_bars")
    first, last = pair
    if not 1 <= first <= last <= request.bars:
        raise RequestError(f"morph_bars {first}:{last} must be bars of the generated part, from 1, inclusive: "
                           f"1 <= first <= last <= {request.bars} (bars)", "morph_bars")
    return first, last


def _vector(meta: CheckpointMeta, specs: list[str], name: str) -> torch.Tensor:
    try:
        return meta.styles.vector(specs)  # (S,)
    except StyleError as e:
        raise RequestError(str(e) if name == "styles" else f"{name}: {e}", name) from None


def style_schedule(meta: CheckpointMeta, request: Request) -> torch.Tensor:
    """(bars * 16, S) float32: the style vector of each generated step (module docstring: morph). Raises
    RequestError for unknown style names or bad morph bars."""
    _whole(request.bars, "bars", 1)
    start = _vector(meta, _specs(request.styles, "styles"), "styles")  # (S,)
    steps = request.bars * STEPS_PER_BAR
    span = _morph_bars(request)
    if span is None:
        return start.expand(steps, -1).clone()
    end = _vector(meta, _specs(request.morph_to, "morph_to"), "morph_to")  # (S,)
    t0, t1 = (span[0] - 1) * STEPS_PER_BAR, span[1] * STEPS_PER_BAR - 1
    w = ((torch.arange(steps, dtype=torch.float64) - t0) / (t1 - t0)).clamp(0.0, 1.0)[:, None]  # (steps, 1)
    return ((1.0 - w) * start.double() + w * end.double()).float()  # (steps, S)


# ------------------------------------------------------------------------------------------------ primer
MIDI_PROBLEMS = {  # MidiError reason -> what the primer is; the rest say the reader's own words
    "empty": "is empty (0 bytes): not a MIDI file",
    "not-midi": "is not a MIDI file (it does not begin with the MIDI header MThd)",
    "corrupt": "is not a valid MIDI file",
    "too-large": f"is larger than the {MAX_PRIMER_BYTES // 2**20} MB a primer file may have",
    "too-long": f"lasts longer than the {MAX_PRIMER_FILE_BARS} bars a primer file may last",
    "type-2": "is a format-2 MIDI file (independent sequences, not one piece)",
    "unreadable": "cannot be read",
    "not-a-file": "is not a file",
}


def _no_notes(path: Path, rep: ReprConfig) -> str:
    """Why a primer that passed the reader's checks gave no grid notes: no notes, drum notes only, or notes outside
    the model's range. The reader drops drum tracks without a trace, so the file is read again with symusic."""
    import symusic

    score = symusic.Score.from_midi(path.read_bytes())  # small and well formed: read_midi checked it
    drums = sum(len(t.notes) for t in score.tracks if t.is_drum)
    pitches = np.concatenate([t.notes.numpy()["pitch"] for t in score.tracks if not t.is_drum and len(t.notes)]
                             or [np.zeros(0, np.int64)])
    if len(pitches):
        return (f"primer {path} has no notes in the model's range, MIDI pitches [{rep.min_pitch}, {rep.max_pitch}): "
                f"its {len(pitches)} notes lie in [{pitches.min()}, {pitches.max()}]")
    if drums:
        return (f"primer {path} has only drum notes ({drums} on the drum channel, MIDI channel 10), which the model "
                "does not play: give a file with pitched notes")
    return f"primer {path} holds no notes"


def read_primer(path: str | Path, meta: CheckpointMeta, bars: int | None = None) -> np.ndarray:
    """A MIDI file -> the primer roll (P, N, 3) float32, read as the checkpoint's shards were read and cut as the module
    docstring says (its last `bars` bars; None: all of it, at most MAX_PRIMER_BARS). RequestError names the file and
    the problem."""
    path = Path(path)
    if bars is not None:
        _whole(bars, "primer_bars", 1, MAX_PRIMER_BARS)
    rep = meta.representation
    try:
        notes = read_midi(path, rep, max_bytes=MAX_PRIMER_BYTES, max_steps=MAX_PRIMER_FILE_BARS * STEPS_PER_BAR)
    except MidiError as e:
        if e.reason == "no-notes":
            raise RequestError(_no_notes(path, rep), "primer") from None
        said = MIDI_PROBLEMS.get(e.reason, f"is not a usable MIDI file ({e.reason})")
        detail = f" ({e.detail})" if e.detail and e.reason in ("corrupt", "unreadable", "not-a-file") else ""
        raise RequestError(f"primer {path} {said}{detail}", "primer") from None
    if len(notes) == 0:  # notes, all outside the pitch range
        raise RequestError(_no_notes(path, rep), "primer")
    end = int(notes["end"].max())  # the primer ends where its last note ends
    first = int(notes["start"].min()) // STEPS_PER_BAR * STEPS_PER_BAR  # whole silent bars before it are dropped
    if bars is None:
        length = -(-(end - first) // STEPS_PER_BAR)  # bars, the last one begun
        if length > MAX_PRIMER_BARS:
            raise RequestError(f"primer {path} lasts {length} bars, more than the {MAX_PRIMER_BARS} a primer may "
                               f"last: use its last bars (primer_bars, at most {MAX_PRIMER_BARS})", "primer")
        start = first
    else:
        start = max(first, (-(-end // STEPS_PER_BAR) - bars) * STEPS_PER_BAR)  # the file's last `bars` bar lines
    return notes_to_roll(notes, rep, start=start, length=end - start)  # (P, N, 3)


# ------------------------------------------------------------------------------------------------ compose
def _prepare(meta: CheckpointMeta, request: Request, max_bars: int | None,
             max_pieces: int | None) -> tuple[torch.Tensor, np.ndarray | None]:
    """Every check, in the order a user fixes things: the checkpoint, the numbers, the styles, the primer. Returns
    the style schedule (steps, S) and the primer roll (P, N, 3) or None."""
    check_checkpoint(meta)
    _check_plain(request, max_bars, max_pieces)
    schedule = style_schedule(meta, request)
    primer = None if request.primer is None else read_primer(request.primer, meta, request.primer_bars)
    return schedule, primer


def check_request(meta: CheckpointMeta | None, request: Request, *, max_bars: int | None = MAX_BARS,
                  max_pieces: int | None = MAX_PIECES) -> None:
    """Everything `compose` checks before generating, without a model: RequestError for the first problem. With meta
    None only what needs no checkpoint (numbers, limits, which fields go together); with it also the checkpoint's
    kind, the style names and the primer (read). None for a limit: none (the CLI's choice)."""
    if meta is None:
        _check_plain(request, max_bars, max_pieces)
    else:
        _prepare(meta, request, max_bars, max_pieces)


def compose(model: DeepJ, meta: CheckpointMeta, request: Request, device: str | torch.device = "cpu",
            progress: Callable[[int, int], None] | None = None, *, max_bars: int | None = MAX_BARS,
            max_pieces: int | None = MAX_PIECES) -> list[Piece]:
    """`request.num` pieces from `model` (loaded from the checkpoint `meta` describes, on `device`), or RequestError
    before anything is generated. The random numbers come from a generator on `device` seeded with `request.seed`
    (as `python -m deepj.generate --device` does). progress(done, total) is called every few generated steps; an
    exception it raises stops the generation and comes out of `compose`."""
    schedule, primer = _prepare(meta, request, max_bars, max_pieces)  # (steps, S), (P, N, 3) or None
    if model.cfg.num_notes != meta.model.num_notes or model.cfg.num_styles != meta.model.num_styles:
        raise ValueError(f"deepj.compose: the model ({model.cfg.num_notes} notes, {model.cfg.num_styles} styles) is "
                         f"not the checkpoint's ({meta.model.num_notes}, {meta.model.num_styles})")
    cfg = SampleConfig(steps=request.bars * STEPS_PER_BAR, temperature=float(request.temperature), mode=request.mode,
                       silence_redraws=request.silence_redraws)
    if request.morph_to:
        style = schedule.expand(request.num, -1, -1).contiguous()  # (num, steps, S): a style per step
    else:  # the sampler's constant-style call: the same pieces as before morphs existed
        style = schedule[0].expand(request.num, -1).contiguous()  # (num, S)
    gen = torch.Generator(device=device).manual_seed(request.seed)
    rolls = generate(model, style, cfg, gen, primer=None if primer is None else torch.from_numpy(primer),
                     progress=progress).numpy()  # (num, steps, N, 3)
    lead = 0 if primer is None or request.continuation_only else len(primer)
    styles = np.concatenate([schedule[:1].expand(lead, -1).numpy(), schedule.numpy()])  # (lead + steps, S)
    pieces = []
    for roll in rolls:
        if lead:
            roll = np.concatenate([primer, roll])  # (P + steps, N, 3)
        pieces.append(Piece(roll=roll, notes=roll_to_notes(roll, meta.representation), primer_steps=lead,
                            styles=styles.copy()))
    return pieces
