"""Train DeepJ: `torchrun --nproc_per_node=N -m deepj.train --config configs/NAME.toml [key=value ...]`.

Also `python -m deepj.train ...` for one process. `run` reads top to bottom: config -> distributed -> data -> the run
folder's lock -> model -> engine (DDP or DeepSpeed behind `Engine`) -> resume -> loop; the loop's pieces (a training
step, logging, validation, the checkpoint) are the functions above it. Exit status: 0 when max_steps is reached,
PREEMPTED_EXIT (75) after a coordinated checkpoint on SIGTERM/SIGUSR2/SIGINT or when the launcher is gone, 2 for a bad
config or input (also a run folder in use, or a shard found corrupt mid-run), NONFINITE_EXIT (3) when a loss or
gradient norm is not finite (nothing saved of that step), 130 after a second SIGINT (nothing saved).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepj import config
from deepj.config import ConfigError
from deepj.data.loader import StreamingLoader, accumulation_steps, shard_file_problems, validation_batches
from deepj.data.manifest import Manifest, ShardError
from deepj.model import DeepJ
from deepj.training import checkpoint, dist
from deepj.training.checkpoint import CheckpointError
from deepj.training.config import TrainConfig
from deepj.training.dist import DistInfo, print0
from deepj.training.engine import Engine, autocast_dtype, build_engine, check_precision, resolve_precision
from deepj.training.logger import LossMeter, Progress, RunLogger, warn0
from deepj.training.loss import deepj_loss
from deepj.training.preempt import PREEMPTED_EXIT, StopFlag, launcher_pid
from deepj.training.resume import (
    TrainState,
    check_resumable,
    find_checkpoint,
    resume,
    save_checkpoint,
    take_run_dir,
)
from deepj.training.samples import log_samples

# Steps timed to size a time budget (train.time_budget_min): from the 5th, past the first steps' one-off costs, to the
# 25th, inside the demo's 50 warm-up steps, whose learning rates do not depend on max_steps.
BUDGET_PROBE = (5, 25)
BUDGET_MARGIN = 0.95  # of the time left: validation, samples and checkpoints are not in the timed steps
NONFINITE_EXIT = 3  # a loss or gradient norm went inf/NaN: not a temporary failure, do not requeue as is
INTERRUPTED_EXIT = 130  # 128 + SIGINT, the shell's code for a Ctrl-C: a second Ctrl-C aborted, nothing saved


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m deepj.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="TOML file (configs/debug.toml, configs/demo.toml, configs/paper.toml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.dir=shards/demo train.max_steps=200")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------- set-up
def resolve(cfg: TrainConfig, given: set[str], manifest: Manifest, info: DistInfo) -> TrainConfig:
    """The config as it will run: the model's note and style counts from the data (a value given for them must
    agree), and `train.precision=auto` made concrete for this device."""
    data = {"num_notes": manifest.num_notes, "num_styles": manifest.styles.num_styles}
    for key, value in data.items():
        if f"model.{key}" in given and getattr(cfg.model, key) != value:
            raise ConfigError(f"model.{key}={getattr(cfg.model, key)} disagrees with {manifest.path} ({value}); the "
                              f"data decides it: leave model.{key} out")
    precision = resolve_precision(cfg.train.precision, info.device)
    check_precision(precision, info.device)  # fp16 off CUDA: refused here, before anything is written
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **data),
                               train=dataclasses.replace(cfg.train, precision=precision))


def check_paths(cfg: TrainConfig) -> None:
    """Files the config names that the run needs later, checked before anything is written: ConfigError naming the
    key."""
    resume = cfg.checkpoint.resume
    if resume not in ("auto", "none") and not Path(resume).exists():
        raise ConfigError(f"checkpoint.resume={resume}: no such folder (give a step-NNNNNNNN checkpoint folder, a run "
                          "folder, auto or none)")
    if cfg.train.backend == "deepspeed":
        import importlib.util

        from deepj.training.engine_deepspeed import read_ds_config

        read_ds_config(cfg.train.deepspeed_config)
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("train.backend=deepspeed, but DeepSpeed is not installed (pip install deepspeed)")


def check_splits(cfg: TrainConfig, manifest: Manifest) -> bool:
    """Whether validation will run, decided at start rather than at the first validation, hours in; warnings for
    shards that data.on_error=skip will skip.

    The training split's files were checked by its loader (present, the manifest's size; no checksum): a bad one is
    a ShardError under data.on_error=raise, or under skip when none is left. A val split that is absent or has no
    pieces: a warning, and validation is skipped. Its shard files are checked the same way: under raise a bad one is
    a ShardError (exit 2); under skip it is skipped when read, and validation is skipped if none is left."""
    for line in shard_file_problems(manifest, "train"):  # only under skip: the loader has refused them under raise
        warn0(f"{line}; skipped (data.on_error=skip)")
    if cfg.train.val_batches == 0:
        return False
    entries = [s for s in manifest.shards if s.split == "val"]
    if sum(s.pieces for s in entries) == 0:
        warn0(f"{manifest.path}: split 'val' {'has no pieces' if entries else 'is absent'}; validation is skipped")
        return False
    problems = shard_file_problems(manifest, "val")
    if problems and cfg.data.on_error == "raise":
        raise ShardError("; ".join(problems) + " (split 'val'; data.on_error=skip would train on without it)")
    for line in problems:
        warn0(f"{line}; skipped (data.on_error=skip)")
    if len(problems) == len(entries) and problems:
        warn0(f"no readable shard left in split 'val' of {manifest.path}; validation is skipped")
        return False
    return True


def set_up_process(cfg: TrainConfig, info: DistInfo) -> None:
    """Threads, determinism and seeds. Dropout differs across ranks, reproducibly."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    torch.set_num_threads(cfg.run.threads or max(1, (os.cpu_count() or 1) // local))
    if cfg.train.deterministic:
        # cuBLAS is deterministic only with a fixed workspace, set before its first use (PyTorch's reproducibility
        # notes); warn_only because some CUDA kernels have no deterministic version.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=info.device.type == "cuda")
    torch.manual_seed(cfg.seed * 1000 + info.rank)
    np.random.seed((cfg.seed * 1000 + info.rank) % 2**32)


# ----------------------------------------------------------------------------------------------------- the loop
def to_device(batch: dict, device: torch.device) -> dict:
    """What the step reads, with `notes` copied once: prev and target are views of it on the device."""
    notes = batch["notes"].to(device, non_blocking=True)  # (B, L+1, N, 3): steps s-1 .. s+L-1
    return {"prev": notes[:, :-1], "target": notes[:, 1:], "beat": batch["beat"].to(device, non_blocking=True),
            "style": batch["style"].to(device, non_blocking=True)}


def run_loss(engine: Engine, batch: dict, play_only: bool):
    out = engine(batch["prev"], batch["target"], batch["beat"], batch["style"])  # (B, T, N, 3) logits and volume
    return deepj_loss(out.float(), batch["target"], play_only=play_only)


def poisoned(step: int, rank: int) -> bool:
    """Test hook: `DEEPJ_FAULT=nan-batch:<step>:<rank>` turns that rank's first micro-batch of that optimizer step into
    NaN, as a corrupt batch would (tests/test_hardening_train.py); unset, it costs a dictionary lookup per step."""
    return os.environ.get("DEEPJ_FAULT") == f"nan-batch:{step}:{rank}"


@dataclass
class StepResult:
    grad_norm: torch.Tensor  # before clipping, 0-d on the device
    wait: float  # seconds spent waiting for data (the loop reads the loss every micro-batch, so device idle time)
    nonfinite: str = ""  # what this rank saw go non-finite ("" if nothing)
    bad_rank: int = -1  # the highest rank that saw a non-finite value, the same on every rank; -1: none
    applied: bool = False  # the bad step reached the optimizer anyway (DeepSpeed ZeRO 1/2: checked after its step)


def train_step(engine: Engine, batches: Iterator[dict], accumulation: int, cfg: TrainConfig, info: DistInfo,
               meter: LossMeter, stop: StopFlag, step: int) -> StepResult:
    """Optimizer step `step` over `accumulation` micro-batches, unless a loss or the gradient norm is not finite.

    Between the gradients and the optimizer step, the step's one collective (the stop flag's) also carries "this rank
    saw a non-finite loss or gradient norm", so every rank agrees on both before anything is applied; a bad step is
    not applied (`bad_rank` >= 0). Under fp16 an inf gradient norm is the loss scaler's business (it skips that step
    and lowers the scale), so only the loss counts there. DeepSpeed ZeRO 1/2 know the norm only inside their step,
    which skips a non-finite one by itself (fp32, fp16); it is checked right after, the same on every rank."""
    wait, bad = 0.0, []
    for m in range(accumulation):
        t0 = time.perf_counter()
        raw = next(batches)
        batch = to_device(raw, info.device)
        wait += time.perf_counter() - t0
        if m == 0 and poisoned(step, info.rank):
            batch["prev"] = torch.full_like(batch["prev"], float("nan"))
        with engine.no_sync() if m < accumulation - 1 else contextlib.nullcontext():
            total, terms = run_loss(engine, batch, cfg.model.play_only)
            engine.backward(total)  # also for a bad loss: every rank's backward must take part in the all-reduce
        values = meter.add(total, terms)
        if not all(math.isfinite(v) for v in values.values()):
            windows = ", ".join(f"({p}, {s})" for p, s, _ in raw["window"][:4].tolist())
            bad.append(f"micro-batch {m}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
                       + f" (windows (piece, start step) {windows}{', ...' if len(raw['window']) > 4 else ''})")
    check_norm = cfg.train.precision != "fp16"
    norm = engine.clip_gradients()
    if norm is not None and check_norm and not math.isfinite(float(norm)):
        bad.append(f"gradient norm {float(norm)}")
    (worst,) = stop.agree(info.rank + 1.0 if bad else 0.0)
    result = StepResult(norm, wait, "; ".join(bad), int(worst) - 1)
    if result.bad_rank >= 0:
        return result
    result.grad_norm = engine.apply_step()
    if norm is None and check_norm and not math.isfinite(float(result.grad_norm)):
        # DeepSpeed's global norm, the same number on every rank: they agree without a collective.
        result.nonfinite, result.bad_rank, result.applied = f"gradient norm {float(result.grad_norm)}", 0, True
    return result


def weights_finite(engine: Engine) -> bool:
    """Every weight finite (checked before a save; the same answer on every rank, whose weights are replicas)."""
    return bool(torch.stack([torch.isfinite(p.detach()).all() for p in engine.module.parameters()]).all())


def report_nonfinite(cfg: TrainConfig, what: str, bad_rank: int, step: int, last_saved: int, info: DistInfo,
                     applied: bool = False) -> None:
    """Which step, which term, on which rank (`what`: this rank's finding, "" if it saw nothing), and what usually
    causes it; every rank that saw something says what."""
    if what:
        print(f"{'' if info.is_main else f'rank {info.rank}: '}non-finite at step {step}: {what}", flush=True)
    seen = "" if what else f" (a non-finite loss on rank {bad_rank})"
    newest = checkpoint.step_dir(cfg.run.dir, last_saved) if last_saved else "none (no checkpoint was written yet)"
    clip = "off: nothing bounds a step" if cfg.optim.grad_clip == 0 else f"{cfg.optim.grad_clip:g}"
    print0(f"stopping at step {step}{seen} without {'' if applied else 'applying or '}saving it; the newest "
           f"checkpoint stays {newest}. Usual causes: a learning rate too high (optim.lr={cfg.optim.lr:g}, "
           f"optim.grad_clip {clip}), fp16 overflow (train.precision={cfg.train.precision}; bf16 has fp32's range), "
           f"or corrupt data (the windows named above). Exiting {NONFINITE_EXIT}")


def validate(engine: Engine, cfg: TrainConfig, manifest: Manifest, info: DistInfo,
             stop: StopFlag) -> dict[str, float] | None:
    """Mean validation loss terms over the same number of batches on every rank; agrees on the stop flag per batch
    (every rank runs the same number of batches, so that collective lines up) and stops early when it is agreed."""
    engine.eval()
    meter = LossMeter()
    with torch.no_grad():
        for batch in validation_batches(cfg.data, micro_batch=cfg.train.micro_batch, rank=info.rank,
                                        world_size=info.world_size, num_batches=cfg.train.val_batches,
                                        manifest=manifest):
            meter.add(*run_loss(engine, to_device(batch, info.device), cfg.model.play_only))
            stop.agree()
            if stop.requested:
                break
    engine.train()
    return meter.mean("val") if meter.n else None


def size_to_budget(cfg: TrainConfig, step: int, probe_s: float, elapsed_s: float, engine: Engine,
                   logger: RunLogger, info: DistInfo) -> None:
    """At the end of the probe: the slowest rank's seconds per step over it, and the time left of the budget, give
    the steps that fit; max_steps becomes that (never more than given), the schedule follows, config.toml says so."""
    per_step = dist.all_reduce_max(probe_s / (BUDGET_PROBE[1] - BUDGET_PROBE[0]))
    left = dist.all_reduce_max(cfg.train.time_budget_min * 60 - elapsed_s)
    given = cfg.train.max_steps
    cfg.train.max_steps = min(given, step + max(1, int(BUDGET_MARGIN * left / per_step)))
    engine.reapply_optim(cfg.optim, cfg.train.max_steps)
    logger.max_steps = cfg.train.max_steps
    if info.is_main:
        (Path(cfg.run.dir) / "config.toml").write_text(config.to_toml(cfg))
    print0(f"time budget {cfg.train.time_budget_min:g} min: {per_step:.3f} s a step on this machine (steps "
           f"{BUDGET_PROBE[0] + 1}-{BUDGET_PROBE[1]}), {left / 60:.1f} min left -> train.max_steps {given} -> "
           f"{cfg.train.max_steps} (written to {Path(cfg.run.dir) / 'config.toml'})")


def budget_on_resume(cfg: TrainConfig, meta) -> None:
    """A run resumed under the same time budget keeps the max_steps its start sized (saved in the checkpoint)."""
    saved = meta.config.get("train", {})
    if (cfg.train.time_budget_min > 0 and saved.get("time_budget_min") == cfg.train.time_budget_min
            and isinstance(saved.get("max_steps"), int) and saved["max_steps"] < cfg.train.max_steps):
        print0(f"time budget {cfg.train.time_budget_min:g} min: train.max_steps {saved['max_steps']}, as the run's "
               "start sized it")
        cfg.train.max_steps = saved["max_steps"]


def forever(loader: StreamingLoader) -> Iterator[dict]:
    while True:  # epochs; the loader advances its own epoch counter at each end
        yield from loader


def train_loop(cfg: TrainConfig, state: TrainState, engine: Engine, loader: StreamingLoader, manifest: Manifest,
               info: DistInfo, logger: RunLogger, stop: StopFlag, accumulation: int, validation: bool) -> int:
    """Optimizer steps until max_steps, a stop every rank agreed on (save, PREEMPTED_EXIT) or a non-finite step (no
    save, NONFINITE_EXIT); returns the exit code."""
    meter, progress, batches = LossMeter(), Progress(cfg, info), forever(loader)
    run_dir = Path(cfg.run.dir)
    engine.train()
    # A fresh run under a time budget times its first steps and sizes max_steps from them (size_to_budget).
    sizing = cfg.train.time_budget_min > 0 and state.step == 0 and cfg.train.max_steps > BUDGET_PROBE[1]
    t_start = probe_start = time.perf_counter()
    while state.step < cfg.train.max_steps:
        result = train_step(engine, batches, accumulation, cfg, info, meter, stop, state.step + 1)
        if result.bad_rank >= 0:
            report_nonfinite(cfg, result.nonfinite, result.bad_rank, state.step + 1, state.last_saved, info,
                             applied=result.applied)
            return NONFINITE_EXIT
        state.step += 1
        if sizing and state.step == BUDGET_PROBE[0]:
            probe_start = time.perf_counter()
        elif sizing and state.step == BUDGET_PROBE[1]:
            now = time.perf_counter()
            size_to_budget(cfg, state.step, now - probe_start, now - t_start, engine, logger, info)
        progress.windows = progress.windows + cfg.train.global_batch
        progress.data_wait = progress.data_wait + result.wait
        if state.step % cfg.log.every == 0 or state.step == cfg.train.max_steps:
            logger.scalars(state.step, progress.scalars(meter, engine, result.grad_norm, loader.epoch), console=True)
        if (validation and cfg.train.val_every and state.step % cfg.train.val_every == 0
                and state.step < cfg.train.max_steps):
            val = validate(engine, cfg, manifest, info, stop)
            if val:
                logger.scalars(state.step, val)
                print0(f"validation at step {state.step}: loss {val['val/loss']:.4f}")
        if info.is_main and cfg.log.sample_every and state.step % cfg.log.sample_every == 0:
            log_samples(engine.module, manifest.styles, manifest.representation, logger, state.step,
                        bars=cfg.log.sample_bars, seed=cfg.seed)
        preempted = stop.requested  # agreed by all ranks in this step's collective (or in validation's)
        periodic = cfg.checkpoint.every > 0 and state.step % cfg.checkpoint.every == 0
        if preempted or periodic or state.step == cfg.train.max_steps:
            if state.step != state.last_saved:
                if not weights_finite(engine):
                    # A finite gradient times a huge learning rate can still overflow a weight: never save that.
                    report_nonfinite(cfg, "weights after the update", 0, state.step, state.last_saved, info,
                                     applied=True)
                    return NONFINITE_EXIT
                save_checkpoint(cfg, state, engine, loader, manifest, info)
            logger.flush()
        if preempted:
            print0(f"preempted ({stop.signal_name or 'signal on another rank'}): saved step {state.step}, "
                   f"exiting {PREEMPTED_EXIT}")
            return PREEMPTED_EXIT
    if validation:
        val = validate(engine, cfg, manifest, info, stop)
        if val:
            logger.scalars(state.step, val)
            print0(f"final validation at step {state.step}: loss {val['val/loss']:.4f}")
    print0(f"done: {state.step} steps; checkpoints and TensorBoard in {run_dir} (tensorboard --logdir {run_dir})")
    return 0


# ---------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    """`run`, with the run folder's lock released however it returns (the OS releases it when the process dies)."""
    try:
        return run(argv)
    finally:
        checkpoint.unlock_run_dir()


def run(argv=None) -> int:
    args = parse_args(argv)
    parent = launcher_pid()  # now, while the launcher (if any) is surely alive
    # ------------------------------------------------------------------ config
    try:
        cfg = config.load(TrainConfig, args.config, args.overrides)
        given = config.given_keys(TrainConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    # ------------------------------------------------------------------ distributed
    info = dist.init_distributed(cfg.run.device)
    set_up_process(cfg, info)
    # ------------------------------------------------------------------ data, and every file the run will need
    try:
        manifest = Manifest.load(cfg.data.dir)
        cfg = resolve(cfg, given, manifest, info)
        check_paths(cfg)
        accumulation = accumulation_steps(cfg.train.global_batch, cfg.train.micro_batch, info.world_size)
        loader = StreamingLoader(cfg.data, "train", micro_batch=cfg.train.micro_batch,
                                 global_batch=cfg.train.global_batch, rank=info.rank, world_size=info.world_size,
                                 seed=cfg.seed, pin_memory=info.device.type == "cuda", manifest=manifest)
        validation = check_splits(cfg, manifest)
    except (ConfigError, ShardError, ValueError) as e:
        print0(f"{'config' if isinstance(e, ConfigError) else 'data'} error: {e}")
        return 2
    # ------------------------------------------------------------------ the run folder: one training at a time
    run_dir = Path(cfg.run.dir)
    refused = take_run_dir(run_dir, info)
    if refused:
        print0(f"run.dir error: {refused}")
        return 2
    # ------------------------------------------------------------------ the checkpoint to resume, if any
    try:
        ckpt = find_checkpoint(cfg, info)
        if ckpt is not None:
            budget_on_resume(cfg, checkpoint.CheckpointMeta.load(ckpt))
        meta = None if ckpt is None else check_resumable(cfg, ckpt, manifest)
    except CheckpointError as e:
        print0(f"resume error: {e}")
        return 2
    if info.is_main:
        (run_dir / "config.toml").write_text(config.to_toml(cfg))
    print0(f"# resolved config ({run_dir / 'config.toml'})\n{config.to_toml(cfg)}")
    print0(f"data: {manifest.totals['train']['pieces']} pieces, {manifest.styles.num_styles} styles, "
           f"{loader.steps_per_epoch()} steps per epoch at global batch {cfg.train.global_batch} "
           f"(micro {cfg.train.micro_batch} x accumulation {accumulation} x world {info.world_size})")
    # ------------------------------------------------------------------ model
    model = DeepJ(cfg.model).to(info.device)
    print0(f"model: {sum(p.numel() for p in model.parameters()):,} parameters on {info.device} ({info.world_size} "
           f"rank(s), backend {info.backend}, precision {cfg.train.precision})")
    # ------------------------------------------------------------------ engine: DDP or DeepSpeed, one interface
    engine = build_engine(model, cfg.train, cfg.optim, info, accumulation)
    lstm, wanted = engine.compute_dtypes(), autocast_dtype(cfg.train.precision) or torch.float32
    print0(f"precision {cfg.train.precision}: LSTMs compute in {', '.join(sorted(str(d) for d in lstm))}"
           + ("" if lstm == {wanted} else f" (not {wanted}: {info.device.type} autocast decides per op)"))
    # ------------------------------------------------------------------ resume
    try:
        start = 0 if ckpt is None else resume(cfg, ckpt, meta, engine, loader, info)
    except CheckpointError as e:
        print0(f"resume error: {e}")
        return 2
    state = TrainState(step=start, last_saved=start)

    # ------------------------------------------------------------------ loop
    logger = RunLogger(run_dir, enabled=info.is_main, start_step=state.step, max_steps=cfg.train.max_steps)
    if state.step == 0:
        logger.text("config", "```\n" + config.to_toml(cfg) + "\n```")
    try:
        exit_code = train_loop(cfg, state, engine, loader, manifest, info, logger,
                               StopFlag(parent), accumulation, validation)
    except ShardError as e:
        # A shard whose checksum or contents fail is found only when read. This rank ends now (a rank still inside
        # a collective is ended by its launcher or by the broken connection); nothing of the step is saved.
        print(f"data error{'' if info.is_main else f' (rank {info.rank})'}: {e}", flush=True)
        logger.close()
        return 2
    logger.close()
    dist.barrier()
    dist.destroy()
    return exit_code


if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:  # a second Ctrl-C (the first asks for a save at the next step)
        print("aborted by a second SIGINT: nothing saved since the last checkpoint", file=sys.stderr, flush=True)
        code = INTERRUPTED_EXIT
    # Everything is saved, closed and flushed by now. Skip interpreter teardown: with gloo, a C++ thread still joinable
    # at finalisation aborts the process ("terminate called without an active exception") about one run in three,
    # which torchrun would report as a failed job after a successful run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
