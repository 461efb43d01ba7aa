"""Held-out likelihood of a trained DeepJ: `python -m deepj.evaluate RUN_OR_CHECKPOINT --data SHARDS [--split val]`.

Windows of `--seq-len` steps (default: the checkpoint's data.seq_len) are cut from the split's shards by
`deepj.data.loader.validation_batches` (deterministic, no transposition, no augmentation) and run with teacher forcing,
in eval mode. `--batches N` scores N micro-batches spread evenly over the split; `--batches 0` (default) is a full pass
over all its windows, each once. Windows start every `--stride` steps (default = seq_len: consecutive, so each step of a
piece is scored once, except a piece's last partial window, which is not scored). A window's first step is predicted
from the piece's true previous step (zeros at the piece start) from a zero LSTM state, as in training. Steps beyond a
piece's end (a piece shorter than a window is padded with silence) are not scored.

Definitions, over the scored note-steps S (every note of every scored step), the scored frames F (steps: |S| = N|F|)
and the played note-steps P (target play = 1), with z the model's logits and y the targets:

    play    = sum over S of  -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))]     (Bernoulli NLL, nats)
    replay  = sum over P of the same Bernoulli NLL of the replay bit                 (nats; only where the target plays)
    total   = play + replay                                                        (nats of the [play, replay] events)
    volume  = sum over P of (predicted volume - target volume)^2                   (squared error, NOT a likelihood)

reported as: `*_nll_per_note_step` = sum / |S|; `*_nll_per_frame` = sum / |F| (sum over notes, mean over frames, the
BL2012 convention); `replay_nll_per_played_note` = replay / |P| (the training loss's normalisation); `volume_mse` =
volume / |P|, and `volume_sq_error_per_frame` = volume / |F|. The model predicts a volume value, not a distribution,
so volume is reported as an MSE and left out of the total. For a play-only checkpoint (BL2012 mode) only play is
defined: replay and volume are null and total = play.

Writes `eval-<split>.json`, `eval-<split>.md` and PNG plots (NLL per pitch, NLL per beat position) into the run
folder, and the scalars and figures to its TensorBoard (`<run>/tb`, tags `eval/<split>/...`, at the checkpoint's
step). Refuses a checkpoint whose pitch range differs from the shards' (their notes would mean other pitches) and one
that lacks a style of the shards.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deepj.config import device_option, int_range
from deepj.data.loader import DataConfig, validation_batches
from deepj.data.manifest import Manifest, ShardError
from deepj.music.constants import PLAY, REPLAY, STEPS_PER_BAR, VOLUME
from deepj.training import checkpoint
from deepj.training.checkpoint import CheckpointMeta, load_model

DEFAULT_SEQ_LEN = 128


class EvalError(Exception):
    """Data or checkpoint that cannot be evaluated together; the message says why."""


class NLLAccumulator:
    """Sums of the NLL terms, overall, per pitch and per beat position (float64)."""

    def __init__(self, num_notes: int, play_only: bool):
        self.play_only = play_only
        self.frames = 0
        self.windows = 0
        self.sums = {k: 0.0 for k in ("play", "replay", "volume")}
        self.played = 0.0
        # Per pitch (N,) and per beat position (16,): term sums and their note-step / played counts.
        self.pitch = {k: np.zeros(num_notes) for k in ("play", "replay", "volume", "count", "played")}
        self.beat = {k: np.zeros(STEPS_PER_BAR) for k in ("play", "replay", "volume", "count", "played")}

    def add(self, out: torch.Tensor, target: torch.Tensor, beat: torch.Tensor, mask: torch.Tensor) -> None:
        """out/target: (B, L, N, 3); beat: (B, L) int64; mask: (B, L) 1 on scored steps, 0 on padding."""
        out, target = out.double(), target.double()
        m = mask.double()[..., None]  # (B, L, 1): broadcast over notes
        y = target[..., PLAY]
        played = (y > 0.5).double() * m  # (B, L, N): scored note-steps whose target plays
        terms = {"play": F.binary_cross_entropy_with_logits(out[..., PLAY], y, reduction="none") * m}
        if not self.play_only:
            terms["replay"] = F.binary_cross_entropy_with_logits(out[..., REPLAY], target[..., REPLAY],
                                                                 reduction="none") * played
            terms["volume"] = (out[..., VOLUME] - target[..., VOLUME]).square() * played
        count = m.expand_as(y)  # (B, L, N)
        beat_1h = F.one_hot(beat, STEPS_PER_BAR).double()  # (B, L, 16)
        for name, t in [*terms.items(), ("count", count), ("played", played)]:
            if name in self.sums:
                self.sums[name] += float(t.sum())
            self.pitch[name] += t.sum((0, 1)).numpy()  # (N,)
            self.beat[name] += torch.einsum("bln,blk->k", t, beat_1h).numpy()  # (16,)
        self.played += float(played.sum())
        self.frames += int(mask.sum())
        self.windows += int((mask.sum(1) > 0).sum())

    def result(self) -> dict:
        if self.frames == 0:
            raise EvalError("no step was scored (the split's pieces are empty)")
        note_steps = float(self.pitch["count"].sum())
        s, res = self.sums, {}
        res["play_nll_per_note_step"] = s["play"] / note_steps
        res["play_nll_per_frame"] = s["play"] / self.frames
        if self.play_only:
            res.update({k: None for k in ("replay_nll_per_note_step", "replay_nll_per_frame",
                                          "replay_nll_per_played_note", "volume_mse", "volume_sq_error_per_frame")})
            res["total_nll_per_note_step"], res["total_nll_per_frame"] = res["play_nll_per_note_step"], \
                res["play_nll_per_frame"]
        else:
            played = max(self.played, 1.0)
            res["replay_nll_per_note_step"] = s["replay"] / note_steps
            res["replay_nll_per_frame"] = s["replay"] / self.frames
            res["replay_nll_per_played_note"] = s["replay"] / played
            res["volume_mse"] = s["volume"] / played
            res["volume_sq_error_per_frame"] = s["volume"] / self.frames
            res["total_nll_per_note_step"] = (s["play"] + s["replay"]) / note_steps
            res["total_nll_per_frame"] = (s["play"] + s["replay"]) / self.frames
        res["counts"] = {"windows": self.windows, "frames": self.frames, "note_steps": int(note_steps),
                         "played_note_steps": int(self.played)}
        return res

    def profile(self, table: dict) -> dict[str, list[float | None]]:
        """Per pitch or per beat: play NLL per note-step, replay NLL and volume MSE per played note-step."""
        def ratio(num, den):
            return [float(a / b) if b > 0 else None for a, b in zip(num, den)]

        out = {"play_nll": ratio(table["play"], table["count"]), "note_steps": table["count"].astype(int).tolist(),
               "played": table["played"].astype(int).tolist()}
        if not self.play_only:
            out["replay_nll_per_played"] = ratio(table["replay"], table["played"])
            out["volume_mse"] = ratio(table["volume"], table["played"])
        return out


def check_compatible(meta: CheckpointMeta, manifest: Manifest, ckpt: str | Path | None = None) -> None:
    """Refuse a checkpoint and a shard folder that cannot be scored together: another pitch range (the shards' note
    columns would mean other pitches) or a style of the shards that the checkpoint was not trained with. `ckpt`, the
    checkpoint's step folder, is named in the message."""
    name = f"the checkpoint {ckpt}" if ckpt else "the checkpoint"
    ck, rep = meta.representation, manifest.representation
    if (ck.min_pitch, ck.max_pitch) != (rep.min_pitch, rep.max_pitch):
        raise EvalError(f"refusing: {name} models MIDI pitches [{ck.min_pitch}, {ck.max_pitch}), the shards in "
                        f"{manifest.dir} hold [{rep.min_pitch}, {rep.max_pitch}); use shards preprocessed with the "
                        "checkpoint's pitch range")
    missing = [s for s in manifest.styles.styles if s not in meta.styles.styles]
    if missing:
        raise EvalError(f"refusing: the shards in {manifest.dir} hold style(s) that {name} was not trained with: "
                        f"{', '.join(missing)} (its styles: {', '.join(meta.styles.styles)})")


def style_map(ckpt_styles: list[str], data_styles: list[str]) -> torch.Tensor:
    """(S_data, S_ckpt) 0/1 matrix taking the shards' style one-hots to the checkpoint's slots, matched by name."""
    ckpt_styles, data_styles = list(ckpt_styles), list(data_styles)
    missing = [s for s in data_styles if s not in ckpt_styles]
    if missing:
        raise EvalError(f"the shards hold style(s) the checkpoint was not trained with: {', '.join(missing)} "
                        f"(checkpoint styles: {', '.join(ckpt_styles)})")
    m = torch.zeros(len(data_styles), len(ckpt_styles))
    for i, name in enumerate(data_styles):
        m[i, ckpt_styles.index(name)] = 1.0
    return m


@torch.no_grad()
def evaluate(model, meta: CheckpointMeta, data_dir: str | Path, split: str = "val", *, seq_len: int,
             stride: int | None = None, batch_size: int = 16, batches: int = 0, device: str | torch.device = "cpu",
             ckpt: str | Path | None = None) -> dict:
    """Score `model`, which `meta` describes, on a split of a shard folder; returns the metrics dict (see the module
    docstring). `ckpt` names the checkpoint in a refusal."""
    manifest = Manifest.load(data_dir)
    check_compatible(meta, manifest, ckpt)
    smap = style_map(meta.styles.styles, manifest.styles.styles).to(device)
    steps = manifest.piece_steps(split)  # refuses a split without shards, naming the splits there are
    if len(steps) == 0 or int(steps.sum()) == 0:
        raise EvalError(f"{data_dir}: split {split!r} has no pieces")
    cfg = DataConfig(dir=str(data_dir), seq_len=seq_len, stride=stride or seq_len, transpose=0, workers=0)
    # A full pass: enough micro-batches to cover every window; positions beyond the last window wrap around
    # (validation_batches cycles), and those rows are masked out below, so each window counts once.
    total_windows = manifest.windows(split, cfg.seq_len, cfg.stride)
    full = batches == 0
    num_batches = math.ceil(total_windows / batch_size) if full else batches
    acc = NLLAccumulator(model.cfg.num_notes, model.cfg.play_only)
    for i, batch in enumerate(validation_batches(cfg, micro_batch=batch_size, rank=0, world_size=1,
                                                 num_batches=num_batches, split=split)):
        if "window" not in batch:
            raise EvalError("deepj.data.loader batches lack the 'window' field (piece, start, shift) needed to mask "
                            "padding")
        piece, start = batch["window"][:, 0].numpy(), batch["window"][:, 1].numpy()
        valid = np.clip(steps[piece] - start, 0, seq_len)  # (B,) real steps in each window
        if full:  # rows past the split's last window are wrapped repeats
            valid[i * batch_size + np.arange(len(piece)) >= total_windows] = 0
        mask = torch.from_numpy(np.arange(seq_len)[None, :] < valid[:, None]).float()  # (B, L)
        style = batch["style"].to(device) @ smap  # (B, S_ckpt)
        # (B, L, N, 3): batch, steps, notes, {play logit, replay logit, volume}
        out = model(batch["prev"].to(device), batch["target"].to(device), batch["beat"].to(device), style)
        acc.add(out.float().cpu(), batch["target"], batch["beat"], mask)
    res = acc.result()
    rep = manifest.representation
    res["per_pitch"] = acc.profile(acc.pitch)
    res["per_pitch"]["midi_pitch"] = list(range(rep.min_pitch, rep.max_pitch))
    res["per_beat"] = acc.profile(acc.beat)
    res.update({"split": split, "data": str(data_dir), "manifest_hash": manifest.hash,
                "same_corpus_as_training": manifest.hash == meta.manifest_hash,
                "seq_len": seq_len, "stride": cfg.stride, "batch_size": batch_size,
                "mode": "full pass" if full else f"{batches} batches", "play_only": model.cfg.play_only})
    return res


# ---------------------------------------------------------------------------------------------------- report
def plot_figures(res: dict) -> dict:
    """matplotlib figures: NLL per pitch and per beat position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def none_to_nan(xs):
        return [np.nan if x is None else x for x in xs]

    figs = {}
    for key, xs, xlabel in (("per_pitch", res["per_pitch"]["midi_pitch"], "MIDI pitch"),
                            ("per_beat", list(range(STEPS_PER_BAR)), "beat position (step % 16)")):
        prof = res[key]
        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.plot(xs, none_to_nan(prof["play_nll"]), label="play NLL / note-step", marker=".")
        if not res["play_only"]:
            ax.plot(xs, none_to_nan(prof["replay_nll_per_played"]), label="replay NLL / played note-step", marker=".")
            ax2 = ax.twinx()
            ax2.plot(xs, none_to_nan(prof["volume_mse"]), color="tab:green", label="volume MSE", marker=".", lw=0.8)
            ax2.set_ylabel("volume MSE")
            ax2.legend(loc="upper right")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("nats")
        ax.set_title(f"{res['split']}: NLL {key.replace('_', ' ')}")
        ax.legend(loc="upper left")
        fig.tight_layout()
        figs[key] = fig
    return figs


def markdown(res: dict, ckpt: Path, step: int) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    c = res["counts"]
    rows = [("play (Bernoulli NLL)", res["play_nll_per_note_step"], res["play_nll_per_frame"]),
            ("replay (Bernoulli NLL, where played)", res["replay_nll_per_note_step"], res["replay_nll_per_frame"]),
            ("total NLL = play + replay", res["total_nll_per_note_step"], res["total_nll_per_frame"])]
    lines = [f"# Evaluation: {res['split']} split", "",
             (f"Checkpoint `{ckpt}` (step {step}); shards `{res['data']}` (same corpus as training: "
              f"{res['same_corpus_as_training']}); {res['mode']}, windows of {res['seq_len']} steps every "
              f"{res['stride']}; {c['windows']} windows, {c['frames']} frames, {c['note_steps']} note-steps, "
              f"{c['played_note_steps']} played."), "",
             "| term | nats / note-step | nats / frame |", "|---|---|---|"]
    lines += [f"| {name} | {fmt(a)} | {fmt(b)} |" for name, a, b in rows]
    lines += ["", (f"Replay NLL per played note-step: {fmt(res['replay_nll_per_played_note'])}. "
                   f"Volume MSE per played note-step: {fmt(res['volume_mse'])} (a squared error, not a likelihood; "
                   f"per frame: {fmt(res['volume_sq_error_per_frame'])})."), "",
              f"![NLL per pitch](eval-{res['split']}-per_pitch.png)", "",
              f"![NLL per beat position](eval-{res['split']}-per_beat.png)", ""]
    return "\n".join(lines)


def write_report(res: dict, run_dir: Path, ckpt: Path, step: int) -> list[Path]:
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    split = res["split"]
    paths = [run_dir / f"eval-{split}.json", run_dir / f"eval-{split}.md"]
    paths[0].write_text(json.dumps({**res, "checkpoint": str(ckpt), "step": step}, indent=1) + "\n")
    paths[1].write_text(markdown(res, ckpt, step))
    figs = plot_figures(res)
    writer = SummaryWriter(str(run_dir / "tb"))
    try:
        for key, value in res.items():
            if key.endswith(("_per_note_step", "_per_frame", "_per_played_note", "_mse")) and value is not None:
                writer.add_scalar(f"eval/{split}/{key}", value, step)
        for name, fig in figs.items():
            png = run_dir / f"eval-{split}-{name}.png"
            fig.savefig(png, dpi=100)
            paths.append(png)
            writer.add_figure(f"eval/{split}/{name}", fig, step)  # closes the figure
    finally:
        writer.close()
        plt.close("all")
    return paths


def run_seq_len(meta: CheckpointMeta, default: int = DEFAULT_SEQ_LEN) -> int:
    """The training window length of a checkpoint's run (`data.seq_len` of a deepj.train run), else `default`."""
    data = meta.config.get("data", {}) if meta.kind == "train" else {}
    return int(data.get("seq_len", default))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m deepj.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a run folder (its newest complete checkpoint) or a step-NNNNNNNN folder")
    p.add_argument("--data", required=True, help="preprocessed shard folder (with manifest.json)")
    p.add_argument("--split", default="val", choices=["val", "test", "train"])
    p.add_argument("--batches", type=int_range(0), default=0, help="micro-batches spread over the split; 0 = full pass")
    p.add_argument("--batch-size", type=int_range(1), default=16)
    p.add_argument("--seq-len", type=int_range(0), default=0, help="window length; 0 = the checkpoint's data.seq_len")
    p.add_argument("--stride", type=int_range(0), default=0, help="window stride; 0 = seq-len (each step once)")
    p.add_argument("--device", type=device_option, default="cpu", help="cpu, cuda or cuda:N")
    p.epilog = ("With --styles: style fidelity (classifier on real vs generated music), music statistics and a "
                "listening page instead; see python -m deepj.fidelity --help for its options.")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--styles" in argv:  # style fidelity, statistics and the listening page: deepj.fidelity's own options
        from deepj import fidelity

        argv.remove("--styles")
        return fidelity.main(argv)
    args = parse_args(argv)  # every option is checked here (argparse types), before anything is loaded
    try:
        model, meta, ckpt = load_model(args.checkpoint, args.device)
        seq_len = args.seq_len or run_seq_len(meta)
        res = evaluate(model, meta, args.data, args.split, seq_len=seq_len, stride=args.stride or None,
                       batch_size=args.batch_size, batches=args.batches, device=args.device, ckpt=ckpt)
    except (checkpoint.CheckpointError, ShardError, EvalError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_report(res, ckpt.parent, ckpt, meta.step)
    c = res["counts"]
    print(f"{ckpt} on {args.data} [{args.split}, {res['mode']}]: {c['frames']} frames in {c['windows']} windows")

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    print(f"  NLL nats/frame: play {fmt(res['play_nll_per_frame'])} replay {fmt(res['replay_nll_per_frame'])} "
          f"total {fmt(res['total_nll_per_frame'])} | per note-step: play {fmt(res['play_nll_per_note_step'])} "
          f"total {fmt(res['total_nll_per_note_step'])} | volume MSE {fmt(res['volume_mse'])}")
    print("  wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
