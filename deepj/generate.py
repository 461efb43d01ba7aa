"""Generate music in a style or blend: `python -m deepj.generate RUN_OR_CHECKPOINT --style baroque --style chopin=0.3`.

Needs only a run folder or checkpoint: the model config, style vocabulary and pitch range are stored in every
checkpoint. Writes per piece a MIDI file (pretty_midi, 120 bpm), a PNG piano roll and, with --wav, audio (FluidSynth).
`--primer FILE.mid` continues a MIDI file (each piece: its last --primer-bars bars, then the continuation);
`--morph-to NAME` moves the blend from --style to that over the piece (or over --morph-bars FIRST:LAST). The work is
`deepj.compose.compose`, which the studio page calls too: the same options and seed give the same pieces in both.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from deepj.compose import MAX_PRIMER_BARS, MAX_SEED, Request, RequestError, check_request, compose
from deepj.config import device_option, finite_float, folder_problem, int_range
from deepj.music.constants import STEPS_PER_BAR
from deepj.music.midi_io import write_midi
from deepj.music.render import audio_available, render_wav, save_png
from deepj.music.styles import StyleError, parse_spec, slug
from deepj.sampling import SampleConfig
from deepj.training.checkpoint import CheckpointError, CheckpointMeta, load_model, resolve

# Request fields -> the options that set them, for compose's messages ("primer_bars must be ..." -> "--primer-bars")
OPTIONS = {"styles": "--style", "bars": "--bars", "num": "--num", "temperature": "--temperature", "seed": "--seed",
           "silence_redraws": "--silence-redraws", "mode": "--mode", "primer_bars": "--primer-bars",
           "continuation_only": "--continuation-only", "morph_to": "--morph-to", "morph_bars": "--morph-bars"}


def style_spec(text: str) -> str:
    """argparse `type=` for --style: NAME or NAME=WEIGHT with a finite weight >= 0 (the name is checked against the
    checkpoint's styles later)."""
    try:
        parse_spec(text)
    except StyleError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def bar_span(text: str) -> tuple[int, int]:
    """argparse `type=` for --morph-bars: FIRST:LAST, whole numbers, 1 <= FIRST <= LAST (checked against --bars
    later, with the rest of the request)."""
    first, sep, last = text.partition(":")
    try:
        span = int(first), int(last)
    except ValueError:
        span = None
    if not sep or span is None or not 1 <= span[0] <= span[1]:
        raise argparse.ArgumentTypeError(f"must be FIRST:LAST, bars from 1 with FIRST <= LAST, got {text!r}")
    return span


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m deepj.generate", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a run folder (its newest complete checkpoint) or a step-NNNNNNNN folder")
    p.add_argument("--style", action="append", default=[], metavar="NAME[=WEIGHT]", type=style_spec,
                   help="style by name at any level (baroque, bach, baroque/bach); repeat to blend; weights normalised")
    p.add_argument("--bars", type=int_range(1), default=32)
    p.add_argument("--num", type=int_range(1), default=1, help="pieces, generated together as one batch")
    p.add_argument("--temperature", type=finite_float(0, lo_open=True), default=1.0)
    p.add_argument("--seed", type=int_range(0, MAX_SEED), default=0)
    p.add_argument("--out", help="output folder (default: <run>/samples/<style>-seed<S>)")
    p.add_argument("--wav", action="store_true", help="also render WAV with FluidSynth")
    p.add_argument("--mode", choices=["stateful", "window", "paper"], default="stateful",
                   help="stateful: carry the LSTM states (linear in length; a CUDA graph on CUDA); window: the paper's "
                        "sliding 128-step time window; paper: that and the paper's O(N^2) note axis")
    p.add_argument("--silence-redraws", type=int_range(0), default=SampleConfig.silence_redraws, metavar="K",
                   help="a step that would begin a silence (the first step, or one after a sounding step) is "
                        "redrawn up to K times until it sounds (0 = the paper's sampler)")
    p.add_argument("--device", type=device_option, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--primer", metavar="FILE.mid", help="continue this MIDI file: each piece is its last bars (see "
                   "--primer-bars), then --bars bars of continuation")
    p.add_argument("--primer-bars", type=int_range(1, MAX_PRIMER_BARS), metavar="K",
                   help=f"use the primer's last K bars (default: all of it, at most {MAX_PRIMER_BARS} bars)")
    p.add_argument("--continuation-only", action="store_true", help="write the continuation without the primer")
    p.add_argument("--morph-to", action="append", default=[], metavar="NAME[=WEIGHT]", type=style_spec,
                   help="move the blend from --style to this one over the piece; repeat to blend")
    p.add_argument("--morph-bars", type=bar_span, metavar="FIRST:LAST",
                   help="the bars over which the blend moves, counted from 1 in the continuation, inclusive "
                        "(default: 1:BARS, all of it): --style before FIRST, --morph-to after LAST")
    return p.parse_args(argv)


def request_of(args: argparse.Namespace) -> Request:
    return Request(styles=args.style, bars=args.bars, num=args.num, temperature=args.temperature, seed=args.seed,
                   silence_redraws=args.silence_redraws, mode=args.mode, primer=args.primer,
                   primer_bars=args.primer_bars, continuation_only=args.continuation_only, morph_to=args.morph_to,
                   morph_bars=args.morph_bars)


def option_words(e: RequestError) -> str:
    """compose's message in the CLI's words: the Request field it names, and the others it mentions, as options."""
    words = {k: v for k, v in OPTIONS.items() if "_" in k or k == "styles" or k == e.field}
    return re.sub(r"\b(" + "|".join(words) + r")\b", lambda m: words[m.group(1)], str(e))


def default_out(ckpt: Path, request: Request) -> Path:
    """<run>/samples/<style>[-to-<style>][-after-<primer>]-seed<S>: a folder per kind of request."""
    name = slug(request.styles)
    if request.morph_to:
        name += f"-to-{slug(request.morph_to)}"
    if request.primer:
        name += f"-after-{slug(Path(request.primer).stem)}"
    return ckpt.parent / "samples" / f"{name}-seed{request.seed}"


def main(argv=None) -> int:
    """Every argument is checked before anything is loaded or any folder made: a refusal leaves no output folder."""
    args = parse_args(argv)

    def refuse(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if args.wav and not audio_available()[0]:
        return refuse(f"--wav: {audio_available()[1]}")
    request = request_of(args)
    try:
        check_request(None, request, max_bars=None, max_pieces=None)  # the CLI keeps no page limits
    except RequestError as e:
        return refuse(option_words(e))
    if args.out and folder_problem(args.out):
        return refuse(f"--out: {folder_problem(args.out)}")
    if args.device == "cpu":
        torch.set_num_threads(1)  # sampling runs N tiny note-steps per step: threads cost more than they give
    try:
        ckpt = resolve(args.checkpoint)
        meta = CheckpointMeta.load(ckpt)
        try:  # the checkpoint's kind, the style names and the primer, before the weights are read
            check_request(meta, request, max_bars=None, max_pieces=None)
        except RequestError as e:
            return refuse(f"{ckpt}: {e}" if e.field == "checkpoint" else option_words(e))
        out = Path(args.out) if args.out else default_out(ckpt, request)
        if folder_problem(out):
            return refuse(f"output folder: {folder_problem(out)}; choose another with --out")
        model, meta, ckpt = load_model(ckpt, args.device)
    except CheckpointError as e:
        return refuse(str(e))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return refuse(f"{out}: cannot make the output folder ({e.strerror or e})")
    pieces = compose(model, meta, request, device=args.device, max_bars=None, max_pieces=None)
    print(f"{ckpt} (step {meta.step}): {args.num} piece(s) of {args.bars} bars, style mix {mix(meta, pieces[0], 0)}")
    if request.morph_to:
        first, last = request.morph_bars or (1, request.bars)
        print(f"  morphing over bars {first}-{last} of the continuation to {mix(meta, pieces[0], -1)}")
    lead, title = pieces[0].primer_steps, " + ".join(args.style)
    if lead:
        print(f"  primer {args.primer}: each piece's first {lead} steps ({lead / STEPS_PER_BAR:g} bars) are the "
              "primer (a red line in the PNG), then the continuation")
    elif request.primer:
        print(f"  primer {args.primer}: the pieces continue it; written without it (--continuation-only)")
    if request.morph_to:
        title += " -> " + " + ".join(args.morph_to)
    for i, piece in enumerate(pieces):
        stem = out / f"piece-{i:02d}"
        midi = write_midi(piece.notes, stem.with_suffix(".mid"))
        mark = f", primer ends at step {lead}" if lead else ""
        save_png(piece.roll, stem.with_suffix(".png"), title=f"{title} (seed {args.seed}, #{i}{mark})",
                 mark_step=lead or None)
        line = f"  {midi}  {stem.with_suffix('.png')}"
        if args.wav:
            line += f"  {render_wav(midi, stem.with_suffix('.wav'))}"
        print(line + f"  ({len(piece.notes)} notes)")
    return 0


def mix(meta: CheckpointMeta, piece, step: int) -> str:
    """The style vector of one step of a piece, as `slot=weight` for its non-zero slots."""
    return ", ".join(f"{s}={w:.2f}" for s, w in zip(meta.styles.styles, piece.styles[step].tolist()) if w > 0)


if __name__ == "__main__":
    sys.exit(main())
