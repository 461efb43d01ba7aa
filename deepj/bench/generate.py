"""`python -m deepj.bench generate`: generation speed of the stateful sampler (CUDA graph and eager) against the
paper's sliding-window sampler, per batch size, and a same-seed check that every mode samples the same roll.

    python -m deepj.bench generate [--device cuda] [--config configs/paper.toml] [key=value ...] [--run RUN]
        [--bars 32] [--batches 1,256] [--modes stateful,stateful-eager,window,paper] [--repeats 3] [--seed 0]
        [--max-seconds S] [--threads 1] [--silence-redraws 0]

Modes (deepj/sampling.py): stateful = LSTM states carried over steps and notes, one generated step captured as a CUDA
graph and replayed on CUDA (eager elsewhere); stateful-eager = the same without the graph; window = the time axis
re-run from a zero state over the last 128 steps for every step (the paper's), the note axis carried; paper = the
paper's code: window, and the note axis re-run over all N notes for every note (O(N^2) per step).

For each (mode, batch): the median over --repeats of the wall seconds of one `generate` call for B pieces of --bars
bars (CUDA synchronized before each clock reading), after one 2-step warm-up call of the same mode and batch (CUDA
context, cuDNN/cuBLAS handles, allocator). A graph is captured inside each `generate` call, so its capture is part of
the time a user waits; it is also reported alone (capture_s). pieces/s = B / seconds. Real-time factor = seconds of
music generated per wall second, all B pieces counted: B x steps x 0.125 s / seconds, a step being a 16th note at the
120 bpm that deepj writes MIDI at (`deepj.music.midi_io.write_midi`'s default tempo, read from it below; the paper's
tempo). Speedups, at the same batch: stateful's seconds against paper's, window's, and stateful-eager's (the gain of
the graph).

--silence-redraws K (default 0: the paper's sampling, as the GPU figures in docs/benchmarks.md were measured): the
sampler's silence redraws, the same in every mode; the default of `deepj.generate` (8) runs 1 + 8 draws per step.

--max-seconds S: before timing a (mode, batch), probe it with 1 bar (window and paper also with 2 bars, whose step
cost grows with the window until it is full) and skip it if the predicted full-length time exceeds S.

Check, at the first batch size: one seed, min(bars x 16, window) steps in every mode; play and replay must equal
stateful-eager's everywhere and volumes lie within 1e-5 of them. On CUDA the check runs with TF32 off (cuDNN and
matmul): TF32 rounds differently for the different GEMM shapes of the modes, enough to flip a note whose uniform lies
near its threshold. The timings use the default settings. The model: sizes from the config's [model] section, N from
the manifest of its data.dir (48 without one), S from its styles (14 without); or --run, a trained checkpoint (the
cost of sampling does not depend on the weights). The last line printed is one JSON object; the exit status is 1
when the check finds a mismatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import statistics
import sys
import time
from typing import Any

import torch

from deepj import config
from deepj.bench._machine import machine
from deepj.data.manifest import Manifest, ShardError
from deepj.model import DeepJ
from deepj.music.constants import STEPS_PER_BAR, STEPS_PER_BEAT
from deepj.music.midi_io import write_midi
from deepj.sampling import SampleConfig, generate
from deepj.training import checkpoint
from deepj.training.checkpoint import load_model
from deepj.training.config import TrainConfig

MIDI_BPM = inspect.signature(write_midi).parameters["bpm"].default  # 120: the tempo deepj writes MIDI at
SECONDS_PER_STEP = 60.0 / MIDI_BPM / STEPS_PER_BEAT  # 0.125 s: a 16th note
MODES: dict[str, dict[str, Any]] = {  # benchmark mode -> SampleConfig fields
    "stateful": {"mode": "stateful", "cuda_graph": True},
    "stateful-eager": {"mode": "stateful", "cuda_graph": False},
    "window": {"mode": "window"},
    "paper": {"mode": "paper"},
}
REFERENCE = "stateful-eager"  # the check compares every mode with this one
VOLUME_TOLERANCE = 1e-5  # volumes of different GEMM shapes differ in the last bits
WARMUP_STEPS = 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m deepj.bench generate", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", default="configs/paper.toml", help="model sizes from its [model] section")
    source.add_argument("--run", help="a run folder or checkpoint: time the trained model instead")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (with --config)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bars", type=int, default=32)
    p.add_argument("--batches", default="1,256", help="comma-separated batch sizes (pieces generated together)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per (mode, batch); the median is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=config.finite_float(0, lo_open=True),
                   help="skip a (mode, batch) whose probe predicts more than this")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    p.add_argument("--silence-redraws", type=int, default=0, metavar="K",
                   help="redraws of a step that would begin a silence, in every mode (0: the paper's sampling)")
    args = p.parse_args(argv)
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b]
    except ValueError:
        p.error(f"--batches: comma-separated integers, got {args.batches!r}")
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if args.bars < 1 or args.repeats < 1 or not args.batches or min(args.batches) < 1:
        p.error("--bars, --repeats and every batch size must be at least 1")
    if args.silence_redraws < 0:
        p.error("--silence-redraws must be at least 0")
    if args.run and args.overrides:
        p.error("key=value overrides apply to --config, not to a trained --run")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    return args


# --------------------------------------------------------------------------------------------------- model
def build_model(args, device: torch.device) -> tuple[DeepJ, dict[str, Any]]:
    """The model to time and what it is, for the JSON."""
    if args.run:
        model, meta, ckpt = load_model(args.run, device)
        return model, {"run": str(ckpt), "step": meta.step}
    cfg = config.load(TrainConfig, args.config, args.overrides)
    try:
        manifest = Manifest.load(cfg.data.dir)
        num_notes, num_styles = manifest.num_notes, manifest.styles.num_styles
    except ShardError:
        num_notes, num_styles = 48, 14
    torch.manual_seed(args.seed)
    model = DeepJ(dataclasses.replace(cfg.model, num_notes=num_notes, num_styles=num_styles)).to(device).eval()
    return model, {"config": args.config, "overrides": args.overrides}


def styles(batch: int, num_styles: int) -> torch.Tensor:
    """(B, S) one-hot, the pieces cycling through the styles."""
    return torch.eye(num_styles)[torch.arange(batch) % num_styles]


# --------------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(model: DeepJ, style: torch.Tensor, scfg: SampleConfig, seed: int) -> tuple[float, dict, torch.Tensor]:
    """One `generate` call: (wall seconds, its stats, the roll)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    stats: dict = {}
    _sync(device)
    t0 = time.perf_counter()
    roll = generate(model, style, scfg, gen, stats)
    _sync(device)
    return time.perf_counter() - t0, stats, roll


def window_work(steps: int, window: int) -> int:
    """Sum over steps t < `steps` of min(t + 1, window): the time-axis steps run by the window modes."""
    full = max(0, steps - window)
    ramp = steps - full
    return ramp * (ramp + 1) // 2 + full * window


def predict_seconds(probes: list[tuple[int, float]], steps: int, window: int | None) -> float:
    """Full-length seconds from probe runs [(steps, seconds), ...] of one mode and batch.

    Cost of step t: a + b * min(t + 1, window) for the window modes (one probe fixes a with b = 0; two fix both, each
    kept >= 0), a for the stateful ones (window None).
    """
    k2, s2 = probes[-1]
    if window is None or len(probes) == 1:
        return s2 / k2 * steps
    k1, s1 = probes[0]
    w1, w2 = window_work(k1, window), window_work(k2, window)
    det = k1 * w2 - k2 * w1
    a, b = (s1 * w2 - s2 * w1) / det, (k1 * s2 - k2 * s1) / det
    if b < 0:
        a, b = s2 / k2, 0.0
    elif a < 0:
        a, b = 0.0, s2 / w2
    return a * steps + b * window_work(steps, window)


def probe(model: DeepJ, style: torch.Tensor, scfg: SampleConfig, seed: int) -> float:
    """Predicted seconds of the full `scfg.steps` from 1-bar (and, for the window modes, 2-bar) runs. A graph's
    capture is paid once per call, so it is taken out of the per-step cost and added back once."""
    windowed = scfg.mode != "stateful"
    lengths = sorted({min(scfg.steps, k * STEPS_PER_BAR) for k in ((1, 2) if windowed else (1,))})
    probes, capture = [], 0.0
    for k in lengths:
        seconds, stats, _ = run_once(model, style, dataclasses.replace(scfg, steps=k), seed)
        capture = stats["capture_s"]
        probes.append((k, max(seconds - capture, 0.0)))
    return capture + predict_seconds(probes, scfg.steps, scfg.window if windowed else None)


# --------------------------------------------------------------------------------------------------- check
def roll_mismatch(ref: torch.Tensor, other: torch.Tensor) -> tuple[int, float]:
    """Two rolls (B, T, N, 3) -> (notes whose play or replay differ, max |volume difference|)."""
    notes = int((ref[..., :2] != other[..., :2]).any(dim=-1).sum())
    return notes, float((ref[..., 2] - other[..., 2]).abs().max())


def check_modes(model: DeepJ, style: torch.Tensor, steps: int, seed: int, redraws: int = 0) -> dict[str, Any]:
    """Every mode's roll against stateful-eager's for one seed (TF32 off on CUDA, see the module docstring)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        rolls = {name: run_once(model, style, SampleConfig(steps=steps, silence_redraws=redraws, **fields), seed)[2]
                 for name, fields in MODES.items()}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    notes, volume = {}, {}
    for name, roll in rolls.items():
        notes[name], volume[name] = roll_mismatch(rolls[REFERENCE], roll)
    identical = all(n == 0 for n in notes.values()) and all(v <= VOLUME_TOLERANCE for v in volume.values())
    sounding = float(rolls[REFERENCE][..., 0].mean())
    return {"identical": identical, "batch": style.shape[0], "steps": steps, "seed": seed, "reference": REFERENCE,
            "tf32": False, "mismatched_notes": notes, "max_volume_diff": volume, "sounding_fraction": sounding}


# --------------------------------------------------------------------------------------------------- report
def speedups(results: list[dict], batches: list[int]) -> list[dict]:
    """stateful's speedup over paper, window and stateful-eager at each batch: their seconds / stateful's (None where
    one of the two was skipped or not run)."""
    seconds = {(r["mode"], r["batch"]): r.get("seconds_per_batch") for r in results}
    out = []
    for b in batches:
        base = seconds.get(("stateful", b))
        row: dict[str, Any] = {"batch": b}
        for key, other in (("over_paper", "paper"), ("over_window", "window"), ("over_eager", "stateful-eager")):
            s = seconds.get((other, b))
            row[f"stateful_{key}"] = round(s / base, 2) if base and s else None
        out.append(row)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)  # N tiny note-steps per step: threads cost more than they give
    try:
        model, source = build_model(args, device)
    except (config.ConfigError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    steps = args.bars * STEPS_PER_BAR
    music_s = steps * SECONDS_PER_STEP  # per piece
    num_styles, window = model.cfg.num_styles, SampleConfig().window
    print(f"model: {model.num_params():,} parameters, N={model.cfg.num_notes}, S={num_styles}; {args.bars} bars = "
          f"{steps} steps = {music_s:g} s of music at {MIDI_BPM:g} bpm; device {args.device}", flush=True)

    check = check_modes(model, styles(args.batches[0], num_styles), min(steps, window), args.seed,
                        args.silence_redraws)
    if check["identical"]:
        print(f"check: identical ({len(MODES)} modes, batch {check['batch']}, {check['steps']} steps, seed {args.seed},"
              f" {check['sounding_fraction']:.0%} of notes sounding)", flush=True)
    else:
        print(f"check: MISMATCH against {REFERENCE}: notes {check['mismatched_notes']}, max volume difference "
              f"{check['max_volume_diff']}", flush=True)

    print(f"{'mode':<15}{'batch':>6}{'s/batch':>11}{'pieces/s':>11}{'real-time x':>13}{'capture s':>11}  graph",
          flush=True)
    results = []
    for batch in args.batches:
        style = styles(batch, num_styles)
        for name in args.modes:
            scfg = SampleConfig(steps=steps, silence_redraws=args.silence_redraws, **MODES[name])
            run_once(model, style, dataclasses.replace(scfg, steps=WARMUP_STEPS), args.seed)
            row: dict[str, Any] = {"mode": name, "batch": batch}
            if args.max_seconds is not None:
                predicted = probe(model, style, scfg, args.seed)
                row["predicted_s"] = round(predicted, 4)
                if predicted > args.max_seconds:
                    row["skipped"] = True
                    results.append(row)
                    print(f"{name:<15}{batch:>6}  skipped (predicted {predicted:.1f} s > --max-seconds "
                          f"{args.max_seconds:g})", flush=True)
                    continue
            times, stats = [], {}
            for _ in range(args.repeats):
                seconds, stats, _ = run_once(model, style, scfg, args.seed)
                times.append(seconds)
            s = statistics.median(times)
            row.update(seconds_per_batch=round(s, 5), seconds_all=[round(t, 5) for t in times],
                       pieces_per_s=round(batch / s, 4), real_time_factor=round(batch * music_s / s, 3),
                       capture_s=round(stats["capture_s"], 4), cuda_graph=stats["cuda_graph"])
            results.append(row)
            print(f"{name:<15}{batch:>6}{s:>11.3f}{batch / s:>11.3f}{batch * music_s / s:>13.1f}"
                  f"{stats['capture_s']:>11.3f}  {'yes' if stats['cuda_graph'] else 'no'}", flush=True)

    ups = speedups(results, args.batches)
    for row in ups:
        found = [f"{row[k]}x {k.removeprefix('stateful_over_')}" for k in row if k != "batch" and row[k] is not None]
        if found:
            print(f"batch {row['batch']}: stateful (speedup) " + ", ".join(found), flush=True)
    print(json.dumps({"benchmark": "generate", **source, "model_params": model.num_params(),
                      "num_notes": model.cfg.num_notes, "num_styles": num_styles, "bars": args.bars, "steps": steps,
                      "window": window, "tempo_bpm": MIDI_BPM, "music_seconds_per_piece": music_s,
                      "repeats": args.repeats, "seed": args.seed,
                      "silence_redraws": args.silence_redraws, "max_seconds": args.max_seconds,
                      "machine": machine(device), "check": check, "results": results, "speedups": ups}))
    return 0 if check["identical"] else 1
