"""Generate music in a style or blend: `python -m deepj.generate RUN_OR_CHECKPOINT --style baroque --style chopin=0.3`.

Needs only a run folder or checkpoint: the model config, style vocabulary and pitch range are stored in every
checkpoint. Writes per piece a MIDI file (pretty_midi, 120 bpm), a PNG piano roll and, with --wav, audio (FluidSynth).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from deepj.config import ConfigError, device_option, finite_float, folder_problem, int_range
from deepj.music.constants import STEPS_PER_BAR
from deepj.music.midi_io import write_midi
from deepj.music.render import audio_available, render_wav, save_png
from deepj.music.representation import roll_to_notes
from deepj.music.styles import StyleError, parse_spec, slug
from deepj.sampling import SampleConfig, generate
from deepj.training.checkpoint import CheckpointError, CheckpointMeta, load_model, resolve

MAX_SEED = 2**63 - 1  # torch's and numpy's generators both take seeds in [0, 2**63)


def style_spec(text: str) -> str:
    """argparse `type=` for --style: NAME or NAME=WEIGHT with a finite weight >= 0 (the name is checked against the
    checkpoint's styles later)."""
    try:
        parse_spec(text)
    except StyleError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


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
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Every argument is checked before anything is loaded or any folder made: a refusal leaves no output folder."""
    args = parse_args(argv)

    def refuse(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if args.wav and not audio_available()[0]:
        return refuse(f"--wav: {audio_available()[1]}")
    try:
        cfg = SampleConfig(steps=args.bars * STEPS_PER_BAR, temperature=args.temperature, mode=args.mode,
                           silence_redraws=args.silence_redraws)
    except ConfigError as e:  # "sample.silence_redraws must be ..." -> "--silence-redraws must be ..."
        return refuse(re.sub(r"sample\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(e)))
    if args.out and folder_problem(args.out):
        return refuse(f"--out: {folder_problem(args.out)}")
    if args.device == "cpu":
        torch.set_num_threads(1)  # sampling runs N tiny note-steps per step: threads cost more than they give
    try:
        ckpt = resolve(args.checkpoint)
        style = CheckpointMeta.load(ckpt).styles.vector(args.style)  # names checked before the weights are read
        out = Path(args.out) if args.out else ckpt.parent / "samples" / f"{slug(args.style)}-seed{args.seed}"
        if folder_problem(out):
            return refuse(f"output folder: {folder_problem(out)}; choose another with --out")
        model, meta, ckpt = load_model(ckpt, args.device)
    except (CheckpointError, StyleError) as e:
        return refuse(str(e))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return refuse(f"{out}: cannot make the output folder ({e.strerror or e})")
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    rolls = generate(model, style.unsqueeze(0).expand(args.num, -1).contiguous(), cfg, gen).numpy()  # (num, T, N, 3)
    mix = ", ".join(f"{s}={w:.2f}" for s, w in zip(meta.styles.styles, style.tolist()) if w > 0)
    print(f"{ckpt} (step {meta.step}): {args.num} piece(s) of {args.bars} bars, style mix {mix}")
    for i, roll in enumerate(rolls):
        stem = out / f"piece-{i:02d}"
        notes = roll_to_notes(roll, meta.representation)
        midi = write_midi(notes, stem.with_suffix(".mid"))
        save_png(roll, stem.with_suffix(".png"), title=f"{' + '.join(args.style)} (seed {args.seed}, #{i})")
        line = f"  {midi}  {stem.with_suffix('.png')}"
        if args.wav:
            line += f"  {render_wav(midi, stem.with_suffix('.wav'))}"
        print(line + f"  ({len(notes)} notes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
