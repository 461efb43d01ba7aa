"""The last step of `make demo`: one piece per period and one 50/50 blend, then where everything is.

`python -m deepj.demo_report RUN [--bars 16]`
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepj import generate
from deepj.music.render import audio_available
from deepj.music.styles import slug
from deepj.training.checkpoint import CheckpointMeta, resolve


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deepj.demo_report", description=__doc__.splitlines()[0])
    p.add_argument("run", help="the demo's run folder")
    p.add_argument("--bars", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ckpt = resolve(args.run)  # the newest complete checkpoint; its metadata alone names the styles
    periods = CheckpointMeta.load(ckpt).styles.top_level()
    wav = ["--wav"] if audio_available()[0] else []
    out = Path(args.run) / "samples"
    jobs = [[name] for name in periods]
    if len(periods) >= 2:
        jobs.append([f"{periods[0]}=0.5", f"{periods[1]}=0.5"])
    for styles in jobs:
        rc = generate.main([args.run, *sum((["--style", s] for s in styles), []), "--bars", str(args.bars),
                            "--seed", str(args.seed), "--out", str(out / slug(styles)), *wav])
        if rc:
            return rc
    print("\n== deepj demo: done ==")
    print(f"checkpoint:   {ckpt}")
    audio = ", .wav" if wav else f" (no WAV: {audio_available()[1]})"
    print(f"samples:      {out}/<style>/piece-00.mid, .png{audio}")
    print(f"tensorboard:  tensorboard --logdir {Path(args.run) / 'tb'}")
    print(f"more music:   python -m deepj.generate {args.run} --style {periods[0]} --bars 32 --num 4")
    print(f"in a browser: python -m deepj.studio {args.run}   (make studio): sliders, your MIDI continued, morphs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
