"""Style fidelity: does a trained DeepJ write music that a style classifier, trained on real music, files under the
style it was asked for? `python -m deepj.fidelity RUN_OR_CHECKPOINT --data SHARDS [--level period|composer|both]
[--num N] [--bars B] [--blend A,B] [--out DIR]`; the sampling options (--temperature, --mode, --silence-redraws)
are generation's (`deepj.sampling.SampleConfig`). The features and the classifier live in `deepj.evaluation.classifier`.

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
4. Music statistics (`deepj.evaluation.musicstats`) per style, generated vs held-out real, and a listening page
   (`deepj.evaluation.listening`) with piano rolls and audio.

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
import dataclasses
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepj.config import ConfigError, device_option, finite_float, folder_problem
from deepj.data.loader import DataConfig, StreamingLoader
from deepj.data.manifest import Manifest, ShardError
from deepj.evaluate import EvalError, check_compatible, run_seq_len
from deepj.evaluation.classifier import (
    NUM_FEATURES,
    FidelityError,
    StyleClassifier,
    accuracy_block,
    level_labels,
    one_thread,
    shift_corrected,
    window_features,
)
from deepj.model import DeepJ
from deepj.music.constants import PLAY, STEPS_PER_BAR
from deepj.music.representation import ReprConfig, roll_to_notes
from deepj.music.styles import StyleError, StyleTree
from deepj.sampling import MODES, SampleConfig
from deepj.training import checkpoint
from deepj.training.checkpoint import CheckpointMeta, load_model

LEVELS = ("period", "composer")
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_WINDOW = 64  # steps, for a checkpoint whose run has no data.seq_len
MAX_SEED = 2**63 - 1  # the sampler's, the loader's and the classifier's generators take seeds in [0, 2**63)


@dataclass
class FidelityOptions:
    """What `run_fidelity` measures and how. Sampling is generation's own `SampleConfig` (temperature, mode, silence
    redraws; its `steps` is set here from the window and the lead); `seed` seeds the sampler, the real windows' order
    and the classifier."""

    levels: tuple[str, ...] = ("period",)
    num: int = 20  # generated pieces per style
    bars: int = 0  # window length in bars; 0 = the checkpoint's training window (data.seq_len)
    lead_bars: int = 0  # generate this many bars more and classify the last window of each piece
    blend: tuple[str, str] | None = None  # two periods or two composers: P(A) against the blend weight
    max_windows: int = 1500  # real windows per leaf style and split, at most
    listen: int = 2  # pieces per style on the listening page
    audio: bool = True  # WAV files where FluidSynth is installed
    seed: int = 0
    sample: SampleConfig = field(default_factory=SampleConfig)
    device: str = "cpu"
    out: str | None = None  # report folder; None = <run>/eval

    def __post_init__(self) -> None:
        for option, value, least in (("--num", self.num, 1), ("--bars", self.bars, 0),
                                     ("--lead-bars", self.lead_bars, 0), ("--max-windows", self.max_windows, 1),
                                     ("--listen", self.listen, 0)):
            if value < least:
                raise FidelityError(f"{option} must be at least {least}, got {value}")
        unknown = [lv for lv in self.levels if lv not in LEVELS]
        if unknown or not self.levels:
            raise FidelityError(f"levels {list(self.levels)}: choose from {', '.join(LEVELS)}")
        if self.blend is not None and len(self.blend) != 2:
            raise FidelityError(f"--blend wants two style names, got {list(self.blend)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise FidelityError(f"--seed must lie in [0, {MAX_SEED}], got {self.seed}")
        if self.out is not None and folder_problem(self.out):
            raise FidelityError(f"--out: {folder_problem(self.out)}")


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
    manifest = Manifest.load(data_dir)
    steps = manifest.piece_steps(split)  # refuses a split without shards, naming the splits there are
    if len(steps) == 0:
        raise FidelityError(f"{data_dir}: the {split} split holds no pieces")
    rcfg = manifest.representation
    total = manifest.windows(split, window, STEPS_PER_BAR)
    # Batches of a divisor of the window count: the loader drops an epoch's tail of less than one batch.
    batch = max(d for d in range(1, min(32, total) + 1) if total % d == 0)
    cfg = DataConfig(dir=str(data_dir), seq_len=window, stride=STEPS_PER_BAR, transpose=transpose, workers=0)
    loader = StreamingLoader(cfg, split, micro_batch=batch, global_batch=batch, seed=seed, shuffle=True,
                             augment=transpose > 0)
    out, taken = Windows(), np.zeros(manifest.styles.num_styles, dtype=np.int64)
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


# ------------------------------------------------------------------------------------------------ generation
def generate_rolls(model, vectors: torch.Tensor, num: int, steps: int, sample: SampleConfig, *, seed: int,
                   device: str, lead: int = 0, chunk: int = 128) -> np.ndarray:
    """(K, S) style vectors -> (K, num, steps, N, 3) rolls: `num` pieces per vector, generated in batches with
    `sample`'s settings; each piece is `lead` + `steps` steps long and the last `steps` are returned."""
    from deepj.sampling import generate

    style = vectors.repeat_interleave(num, dim=0)  # (K * num, S)
    gen = torch.Generator(device=device).manual_seed(seed)
    cfg = dataclasses.replace(sample, steps=lead + steps)
    # One CPU thread: sampling is a long chain of small ops; on a shared 2-core machine a second thread made it
    # far slower, and alone it gains little.
    with one_thread() if device == "cpu" else nullcontext():
        rolls = [generate(model, style[i : i + chunk].to(device), cfg, gen)[:, lead:].numpy()
                 for i in range(0, len(style), chunk)]
    out = np.concatenate(rolls)
    return out.reshape(len(vectors), num, *out.shape[1:])


def blend_level(a: str, b: str, styles: StyleTree) -> tuple[str, str, str]:
    """Which classifier judges a blend of A and B: both periods -> period, both leaves -> composer."""
    periods = styles.top_level()
    a, b = a.strip().lower(), b.strip().lower()
    if a in periods and b in periods:
        return "period", a, b
    la, lb = styles.leaf(a), styles.leaf(b)
    if la and lb and a not in periods and b not in periods:
        return "composer", la, lb
    raise FidelityError(f"--blend {a},{b}: name two periods ({', '.join(periods)}) or two composers "
                        f"({', '.join(styles.styles)})")


# ------------------------------------------------------------------------------------------------ the evaluation
@dataclass
class Setup:
    """A checkpoint and a shard folder checked compatible, and the windows the run compares."""

    model: DeepJ
    meta: CheckpointMeta
    ckpt: Path
    manifest: Manifest
    bars: int
    window: int  # steps classified per piece or real window
    lead: int  # steps generated before them
    transpose: int  # the run's data.transpose, applied to the classifier's training windows

    @property
    def rcfg(self) -> ReprConfig:
        return self.manifest.representation


def prepare(path: str | Path, data_dir: str | Path, opts: FidelityOptions, log) -> Setup:
    manifest = Manifest.load(data_dir)
    if opts.blend:  # refused now, not after the levels' work
        level = blend_level(opts.blend[0], opts.blend[1], manifest.styles)[0]
        if level not in opts.levels:
            raise FidelityError(f"--blend {','.join(opts.blend)} needs --level {level} (or both)")
    ckpt = checkpoint.resolve(path)
    out = Path(opts.out) if opts.out else ckpt.parent / "eval"
    if folder_problem(out):
        raise FidelityError(f"report folder: {folder_problem(out)}; choose another with --out")
    model, meta, ckpt = load_model(ckpt, opts.device)
    check_compatible(meta, manifest, ckpt)
    bars = opts.bars or max(1, run_seq_len(meta, DEFAULT_WINDOW) // STEPS_PER_BAR)
    transpose = int(meta.config.get("data", {}).get("transpose", 0)) if meta.kind == "train" else 0
    setup = Setup(model, meta, ckpt, manifest, bars, bars * STEPS_PER_BAR, opts.lead_bars * STEPS_PER_BAR, transpose)
    log(f"{ckpt} (step {meta.step}): windows of {bars} bars"
        + (f" (generated: the last {bars} of {opts.lead_bars + bars} bars)" if opts.lead_bars else "")
        + f"; classifier training windows transposed up to +-{transpose} semitones as in training")
    return setup


def judge_level(level: str, su: Setup, train: Windows, val: Windows, opts: FidelityOptions, log):
    """Fit the level's classifier on real train windows; score it on real val windows and on pieces generated for
    each of its classes. Returns (report entry, classifier, what the report files need)."""
    from deepj.evaluation import musicstats

    classes, leaf_class = level_labels(list(su.manifest.styles.styles), level)
    ytr, yva = leaf_class[train.y()], leaf_class[val.y()]
    t1 = time.time()
    clf = StyleClassifier(classes).fit(train.x(), ytr, seed=opts.seed)
    fit_s = time.time() - t1
    real = accuracy_block(yva, clf.predict_proba(val.x()), classes)
    # Generate for every class the classifier knows and the checkpoint can condition on.
    names = [c for c in classes if c in su.meta.styles.levels]
    vectors = torch.stack([su.meta.styles.vector([c]) for c in names])
    t1 = time.time()
    rolls = generate_rolls(su.model, vectors, opts.num, su.window, opts.sample, seed=opts.seed, device=opts.device,
                           lead=su.lead)
    gen_s = time.time() - t1
    x = np.stack([window_features(r, su.rcfg) for r in rolls.reshape(-1, *rolls.shape[2:])])
    true = np.repeat([classes.index(c) for c in names], opts.num)
    generated = accuracy_block(true, clf.predict_proba(x), classes)
    shifted = accuracy_block(true, clf.predict_proba(shift_corrected(x, true, train.x(), ytr)), classes)
    stats, real_notes, sets = {}, {}, {}
    for i, c in enumerate(names):
        real_notes[c] = [nt for nt, k in zip(val.notes, yva) if k == classes.index(c)]
        sets[c] = (musicstats.collect((nt, su.window) for nt in real_notes[c]),
                   musicstats.collect((roll_to_notes(r, su.rcfg), su.window) for r in rolls[i]))
        stats[c] = {"real": sets[c][0].summary(), "generated": sets[c][1].summary(), "oa": musicstats.compare(*sets[c])}
    silent = int((rolls[..., PLAY].reshape(len(names) * opts.num, -1).max(1) < 0.5).sum())
    entry = {"classes": classes, "chance": 1.0 / len(classes), "classifier_fit_s": fit_s, "generate_s": gen_s,
             "train_windows": {c: int((ytr == i).sum()) for i, c in enumerate(classes)}, "real_val": real,
             "generated": generated, "generated_shift_corrected": shifted, "generated_styles": names,
             "silent_generated_pieces": silent, "stats": stats}
    log(f"{level}: {len(classes)} classes (chance {1 / len(classes):.3f}); classifier fitted in {fit_s:.1f} s; "
        f"real val accuracy {real['accuracy']:.3f} (balanced {real['balanced_accuracy']:.3f}); generated "
        f"{generated['accuracy']:.3f} over {len(true)} pieces ({gen_s:.0f} s to generate); shift-corrected "
        f"{shifted['accuracy']:.3f}")
    for c in names:
        log(f"  {c:<24} real {fmt(real['recall'][c])}  generated {fmt(generated['recall'][c])}  "
            f"P({c.split('/')[-1]}): asked {fmt(generated['mean_prob_true'][c])}, others "
            f"{fmt(generated['mean_prob_others'][c])}")
    return entry, clf, {"rolls": rolls, "real_notes": real_notes, "sets": sets}


def judge_blend(su: Setup, clfs: dict[str, StyleClassifier], opts: FidelityOptions, log) -> tuple[dict, np.ndarray]:
    """P(A) of pieces generated for w*A + (1-w)*B, w in BLEND_WEIGHTS. Returns (report entry, their rolls)."""
    level, a, b = blend_level(opts.blend[0], opts.blend[1], su.manifest.styles)
    if level not in clfs:
        raise FidelityError(f"--blend {a},{b} needs --level {level} (or both)")
    clf = clfs[level]
    ia, ib = clf.classes.index(a), clf.classes.index(b)
    vectors = torch.stack([su.meta.styles.vector([f"{a}={w}", f"{b}={1 - w}"]) for w in BLEND_WEIGHTS])
    rolls = generate_rolls(su.model, vectors, opts.num, su.window, opts.sample, seed=opts.seed + 1,
                           device=opts.device, lead=su.lead)
    rows = []
    for w, rs in zip(BLEND_WEIGHTS, rolls):
        p = clf.predict_proba(np.stack([window_features(r, su.rcfg) for r in rs]))
        rows.append({"w": w, "p_a": float(p[:, ia].mean()), "p_a_std": float(p[:, ia].std()),
                     "p_b": float(p[:, ib].mean()),
                     "p_a_of_ab": float((p[:, ia] / np.maximum(p[:, ia] + p[:, ib], 1e-12)).mean()),
                     "frac_a": float((p.argmax(1) == ia).mean()), "frac_b": float((p.argmax(1) == ib).mean())})
        log(f"blend w={w:.2f}*{a} + {1 - w:.2f}*{b}: P({a}) {rows[-1]['p_a']:.3f}, P({b}) {rows[-1]['p_b']:.3f}")
    return {"a": a, "b": b, "level": level, "rows": rows}, rolls


def run_fidelity(path: str | Path, data_dir: str | Path, opts: FidelityOptions | None = None, log=print) -> dict:
    """The whole evaluation (see the module docstring); writes the report files and returns the report dict."""
    from deepj.evaluation.listening import write_report

    opts = opts or FidelityOptions()
    t0 = time.time()
    su = prepare(path, data_dir, opts, log)
    train = real_windows(data_dir, "train", su.window, transpose=su.transpose, max_per_style=opts.max_windows,
                         seed=opts.seed)
    val = real_windows(data_dir, "val", su.window, transpose=0, max_per_style=opts.max_windows, seed=opts.seed)
    log(f"real windows: train {len(train.style)} (left out {train.short} shorter than {su.window} steps), "
        f"val {len(val.style)} ({time.time() - t0:.0f} s)")
    styles = list(su.manifest.styles.styles)
    report = {"checkpoint": str(su.ckpt), "step": su.meta.step, "data": str(data_dir), "bars": su.bars,
              "window_steps": su.window, "lead_bars": opts.lead_bars, "num": opts.num, "seed": opts.seed,
              "temperature": opts.sample.temperature, "silence_redraws": opts.sample.silence_redraws,
              "sample_mode": opts.sample.mode, "train_transpose": su.transpose, "styles": styles,
              "pitch_range": [su.rcfg.min_pitch, su.rcfg.max_pitch],
              "real_windows": {"train": len(train.style), "val": len(val.style), "train_short": train.short,
                               "val_short": val.short}, "levels": {}}
    clfs, pieces = {}, {}  # per level: the classifier; what the report files need (rolls, real notes, stat sets)
    for level in opts.levels:
        if level == "composer" and level_labels(styles, level)[0] == level_labels(styles, "period")[0]:
            log("composer level: the style tree has one level only; it equals the period level, skipped")
            continue
        report["levels"][level], clfs[level], pieces[level] = judge_level(level, su, train, val, opts, log)
    if opts.blend:
        report["blend"], pieces["blend"] = judge_blend(su, clfs, opts, log)
    report["seconds"] = round(time.time() - t0, 1)
    out = Path(opts.out) if opts.out else su.ckpt.parent / "eval"
    write_report(report, out, pieces, su.rcfg, listen=opts.listen, audio=opts.audio, log=log)
    return report


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


# ------------------------------------------------------------------------------------------------ command line
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
    # finite here; > 0 is SampleConfig's rule, reported by options() as "--temperature must be > 0 and finite"
    p.add_argument("--temperature", type=finite_float(), default=SampleConfig.temperature)
    p.add_argument("--mode", choices=MODES, default=SampleConfig.mode,
                   help="how the sampler runs the model (as python -m deepj.generate --mode)")
    p.add_argument("--lead-bars", type=int, default=0,
                   help="generate this many bars more and classify the last window of each piece (0: from its start)")
    p.add_argument("--silence-redraws", type=int, default=SampleConfig.silence_redraws, metavar="K",
                   help=f"redraw a step that would begin a silence up to K times (default "
                        f"{SampleConfig.silence_redraws}; 0 = the paper's sampler)")
    p.add_argument("--max-windows", type=int, default=1500, help="real windows per leaf style and split, at most")
    p.add_argument("--listen", type=int, default=2, help="pieces per style on the listening page")
    p.add_argument("--no-audio", action="store_true", help="no WAV files, even where FluidSynth is installed")
    p.add_argument("--device", type=device_option, default="cpu", help="cpu, cuda or cuda:N")
    return p.parse_args(argv)


def options(args) -> FidelityOptions:
    """Parsed arguments -> FidelityOptions; a refused value is reported under its option's name."""
    blend = None
    if args.blend:
        blend = tuple(s for s in args.blend.split(",") if s.strip())
        if len(blend) != 2:
            raise FidelityError(f"--blend wants two style names separated by a comma, got {args.blend!r}")
    try:
        sample = SampleConfig(temperature=args.temperature, mode=args.mode, silence_redraws=args.silence_redraws)
    except ConfigError as e:  # "sample.silence_redraws must be ..." -> "--silence-redraws must be ..."
        raise FidelityError(re.sub(r"sample\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(e))) from None
    return FidelityOptions(levels=LEVELS if args.level == "both" else (args.level,), num=args.num, bars=args.bars,
                           lead_bars=args.lead_bars, blend=blend, max_windows=args.max_windows, listen=args.listen,
                           audio=not args.no_audio, seed=args.seed, sample=sample, device=args.device, out=args.out)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run_fidelity(args.checkpoint, args.data, options(args))
    except (checkpoint.CheckpointError, ShardError, EvalError, FidelityError, StyleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
