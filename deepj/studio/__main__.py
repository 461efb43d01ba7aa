"""A local web page for a trained run: `python -m deepj.studio RUN_OR_CHECKPOINT [--port 7860] [--host 127.0.0.1]`.

Style sliders for every style the checkpoint knows, the generation settings of `deepj.generate`, a MIDI primer to
continue, a morph from one style to another; per piece a piano roll, audio (with FluidSynth) and the MIDI file. The
page fetches nothing from the network. The checkpoint is checked before anything is loaded or served: one that is
not a DeepJ style model (a BL2012 benchmark model) is refused with exit status 2.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
from pathlib import Path

from deepj.config import device_option, folder_problem, int_range
from deepj.training.checkpoint import CheckpointError, CheckpointMeta, load_model, resolve


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m deepj.studio", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("checkpoint", help="a run folder (its newest complete checkpoint) or a step-NNNNNNNN folder")
    p.add_argument("--port", type=int_range(1, 65535), default=7860, help="TCP port to serve on (default 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--out", help="folder for the pieces (default: a temporary folder, removed at exit; the newest "
                                 "16 requests are kept either way)")
    p.add_argument("--device", type=device_option, default="cpu", help="cpu, cuda or cuda:N")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def refuse(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    try:
        import gradio  # noqa: F401  (the page's framework: an optional dependency)
    except ImportError:
        return refuse("the studio needs gradio: pip install -e '.[studio]' (or make install)")
    from deepj.compose import RequestError, check_checkpoint
    from deepj.studio.jobs import Studio, set_threads
    from deepj.studio.page import build, launch

    if args.out and folder_problem(args.out):
        return refuse(f"--out: {folder_problem(args.out)}")
    try:
        ckpt = resolve(args.checkpoint)
        check_checkpoint(CheckpointMeta.load(ckpt))  # before the weights are read: a BL2012 model is refused here
        model, meta, ckpt = load_model(ckpt, args.device)
    except (CheckpointError, RequestError) as e:
        return refuse(str(e))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    else:
        out = Path(tempfile.mkdtemp(prefix="deepj-studio-"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
    set_threads(args.device)
    studio = Studio(model, meta, ckpt, out, args.device)
    print(f"{ckpt} (step {meta.step}): {meta.styles.num_styles} styles, pieces in {out}", flush=True)
    try:
        launch(build(studio), studio, args.host, args.port)
    except OSError as e:  # Gradio: "Cannot find empty port in range: 7860-7860"
        return refuse(f"cannot serve on {args.host}:{args.port} ({e}); choose another with --port or --host")
    return 0


if __name__ == "__main__":
    sys.exit(main())
