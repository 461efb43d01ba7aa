"""Train DeepJ: `torchrun --nproc_per_node=N -m deepj.train --config configs/NAME.toml [key=value ...]`.

Also `python -m deepj.train ...` for one process. `main` reads top to bottom: config -> distributed -> data -> model ->
engine (DDP or DeepSpeed behind `Engine`) -> resume -> loop; the loop's pieces (a training step, logging, validation,
the checkpoint) are the functions above it. Exit status: 0 when max_steps is reached, PREEMPTED_EXIT (75) after a
coordinated checkpoint on SIGTERM/SIGUSR2, 2 for a bad config or input.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepj import __version__, config
from deepj.config import ConfigError
from deepj.data.loader import StreamingLoader, accumulation_steps, validation_batches
from deepj.data.manifest import Manifest, ShardError
from deepj.model import DeepJ
from deepj.training import checkpoint, dist
from deepj.training.checkpoint import CheckpointError, CheckpointMeta
from deepj.training.config import TrainConfig
from deepj.training.dist import DistInfo, print0
from deepj.training.engine import Engine, autocast_dtype, build_engine, resolve_precision
from deepj.training.logger import RunLogger, flops_per_window
from deepj.training.loss import deepj_loss
from deepj.training.preempt import PREEMPTED_EXIT, StopFlag
from deepj.training.samples import log_samples

# ModelConfig fields that give the weights their shapes: a resume must match them; any other change is printed.
SHAPE_FIELDS = ("num_notes", "num_styles", "style_dim", "conv_filters", "conv_kernel", "time_hidden", "time_layers",
                "note_hidden", "note_layers")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m deepj.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="TOML file (configs/debug.toml, configs/demo.toml, configs/paper.toml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.dir=shards/demo train.max_steps=200")
    return p.parse_args(argv)


@dataclass
class TrainState:
    """Where the loop is: optimizer steps taken, and the last step saved (so no step is saved twice)."""

    step: int = 0
    last_saved: int = 0


class LossMeter:
    """Loss terms summed over micro-batches (or validation batches), averaged over them and over ranks on read.

    The terms are what the loss returns (play, replay, volume; play alone for a play-only model), the same on every
    rank, so the all-reduce lines up."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None  # (1 + terms,) float64 on the CPU
        self.n = 0

    def add(self, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        values = torch.tensor([float(total.detach()), *(float(v) for v in terms.values())], dtype=torch.float64)
        if self.sums is None:
            self.names, self.sums = ["loss", *terms], torch.zeros_like(values)
        self.sums += values
        self.n += 1

    def mean(self, prefix: str) -> dict[str, float]:
        """Collective. {prefix/loss, prefix/<term>...} averaged over batches and ranks; resets the meter."""
        mean = dist.all_reduce_mean(self.sums / self.n)
        self.sums, self.n = None, 0
        return {f"{prefix}/{k}": float(v) for k, v in zip(self.names, mean)}


# ---------------------------------------------------------------------------------------------------------- set-up
def resolve(cfg: TrainConfig, given: set[str], manifest: Manifest, info: DistInfo) -> TrainConfig:
    """The config as it will run: the model's note and style counts from the data (a value given for them must
    agree), and `train.precision=auto` made concrete for this device."""
    data = {"num_notes": manifest.num_notes, "num_styles": manifest.styles.num_styles}
    for key, value in data.items():
        if f"model.{key}" in given and getattr(cfg.model, key) != value:
            raise ConfigError(f"model.{key}={getattr(cfg.model, key)} disagrees with {manifest.path} ({value}); the "
                              f"data decides it: leave model.{key} out")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **data),
                               train=dataclasses.replace(cfg.train, precision=resolve_precision(cfg.train.precision,
                                                                                                info.device)))


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


def checkpoint_meta(cfg: TrainConfig, manifest: Manifest, step: int, info: DistInfo) -> CheckpointMeta:
    return CheckpointMeta(step=step, world_size=info.world_size, kind="train", backend=cfg.train.backend,
                          model=cfg.model, styles=manifest.styles, representation=manifest.representation,
                          manifest_hash=manifest.hash, config=dataclasses.asdict(cfg), tool=f"deepj {__version__}")


def save_checkpoint(cfg: TrainConfig, state: TrainState, engine: Engine, loader: StreamingLoader, manifest: Manifest,
                    info: DistInfo) -> None:
    """Collective: every rank saves the same step (rank 0 the engine, the loader position and meta.json)."""
    meta = checkpoint_meta(cfg, manifest, state.step, info)
    shared = {"engine": engine.state_dict(), "loader": loader.state_dict()} if info.is_main else None
    path = checkpoint.save(cfg.run.dir, state.step, shared, {"rng": checkpoint.rng_state()}, keep=cfg.checkpoint.keep,
                           collective_write=engine.save_collective, meta=meta)
    state.last_saved = state.step
    print0(f"checkpoint: {path}")


def resume(cfg: TrainConfig, engine: Engine, loader: StreamingLoader, manifest: Manifest, info: DistInfo) -> int:
    """Load the checkpoint `checkpoint.resume` names (none, the newest complete one, or a folder); returns its step.
    Raises CheckpointError when it cannot continue this run: another corpus, or weights of another shape."""
    ckpt = None
    if cfg.checkpoint.resume == "auto":
        ckpt, skipped = checkpoint.find_latest(cfg.run.dir)
        for line in skipped:
            print0(line)
    elif cfg.checkpoint.resume != "none":
        ckpt = checkpoint.resolve(cfg.checkpoint.resume)
    if ckpt is None:
        return 0
    meta = CheckpointMeta.load(ckpt)
    if meta.manifest_hash != manifest.hash:
        raise CheckpointError(f"{ckpt} was trained on another corpus (manifest {meta.manifest_hash}, {cfg.data.dir} "
                              f"is {manifest.hash}); use a new run.dir or checkpoint.resume=none")
    old, new = dataclasses.asdict(meta.model), dataclasses.asdict(cfg.model)
    shape = [f"model.{k}: {old[k]} -> {new[k]}" for k in SHAPE_FIELDS if old[k] != new[k]]
    if shape:
        raise CheckpointError(f"{ckpt} holds weights of another shape ({'; '.join(shape)}); use a new run.dir")
    before, now = config.flatten(meta.config), config.flatten(dataclasses.asdict(cfg))
    for key in sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k)):
        print0(f"resume: {key} changed: {before.get(key)!r} -> {now.get(key)!r}")
    shared = checkpoint.load_shared(ckpt, map_location=info.device)  # {"engine": ..., "loader": ...}
    engine.load_state_dict(shared["engine"])
    engine.load_collective(ckpt)
    mine = checkpoint.load_rank(ckpt, info.rank)
    if mine is not None:
        checkpoint.set_rng_state(mine["rng"])
    loader.load_state_dict(shared["loader"])
    print0(f"resumed from {ckpt} at step {meta.step} (saved by {meta.world_size} rank(s), now {info.world_size})")
    return meta.step


# ----------------------------------------------------------------------------------------------------- the loop
def to_device(batch: dict, device: torch.device) -> dict:
    """What the step reads, with `notes` copied once: prev and target are views of it on the device."""
    notes = batch["notes"].to(device, non_blocking=True)  # (B, L+1, N, 3): steps s-1 .. s+L-1
    return {"prev": notes[:, :-1], "target": notes[:, 1:], "beat": batch["beat"].to(device, non_blocking=True),
            "style": batch["style"].to(device, non_blocking=True)}


def run_loss(engine: Engine, batch: dict, play_only: bool):
    out = engine(batch["prev"], batch["target"], batch["beat"], batch["style"])  # (B, T, N, 3) logits and volume
    return deepj_loss(out.float(), batch["target"], play_only=play_only)


def train_step(engine: Engine, batches: Iterator[dict], accumulation: int, cfg: TrainConfig, info: DistInfo,
               meter: LossMeter) -> tuple[torch.Tensor, float]:
    """One optimizer step over `accumulation` micro-batches; returns the gradient norm and the seconds spent waiting
    for data (the loop reads the loss every micro-batch, which waits for the device, so that time is device idle)."""
    wait = 0.0
    for m in range(accumulation):
        t0 = time.perf_counter()
        batch = to_device(next(batches), info.device)
        wait += time.perf_counter() - t0
        with engine.no_sync() if m < accumulation - 1 else contextlib.nullcontext():
            total, terms = run_loss(engine, batch, cfg.model.play_only)
            engine.backward(total)
        meter.add(total, terms)
    return engine.step(), wait


def validate(engine: Engine, cfg: TrainConfig, manifest: Manifest, info: DistInfo,
             stop: StopFlag) -> dict[str, float] | None:
    """Mean validation loss terms over the same number of batches on every rank; checks the stop flag per batch
    (every rank runs the same number of batches, so that collective lines up) and sets it locally if agreed."""
    engine.eval()
    meter = LossMeter()
    with torch.no_grad():
        for batch in validation_batches(cfg.data, micro_batch=cfg.train.micro_batch, rank=info.rank,
                                        world_size=info.world_size, num_batches=cfg.train.val_batches,
                                        manifest=manifest):
            meter.add(*run_loss(engine, to_device(batch, info.device), cfg.model.play_only))
            if stop.agreed():
                stop.local = True
                break
    engine.train()
    return meter.mean("val") if meter.n else None


class Progress:
    """Throughput since the last log step, and the scalars of a log step."""

    def __init__(self, cfg: TrainConfig, info: DistInfo) -> None:
        self.cfg, self.info = cfg, info
        self.flops_window = flops_per_window(cfg.model, cfg.data.seq_len)
        self.reset()

    def reset(self) -> None:
        self.t0, self.windows, self.data_wait = time.perf_counter(), 0, 0.0

    def scalars(self, meter: LossMeter, engine: Engine, grad_norm: torch.Tensor, epoch: int) -> dict[str, float]:
        dt, cfg = time.perf_counter() - self.t0, self.cfg
        out = meter.mean("train")
        out.update({"train/lr": engine.lr(), "train/grad_norm": float(grad_norm), "train/epoch": epoch,
                    "perf/windows_per_s": self.windows / dt,
                    "perf/note_steps_per_s": self.windows * cfg.data.seq_len * cfg.model.num_notes / dt,
                    "perf/data_wait_frac": self.data_wait / dt})
        if self.info.device.type == "cuda":
            out["perf/tflops_per_s_per_gpu"] = self.flops_window * self.windows / dt / self.info.world_size / 1e12
            out["perf/peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.reset()
        return out


def forever(loader: StreamingLoader) -> Iterator[dict]:
    while True:  # epochs; the loader advances its own epoch counter at each end
        yield from loader


# ---------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
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
    # ------------------------------------------------------------------ data
    try:
        manifest = Manifest.load(cfg.data.dir)
        cfg = resolve(cfg, given, manifest, info)
        accumulation = accumulation_steps(cfg.train.global_batch, cfg.train.micro_batch, info.world_size)
        loader = StreamingLoader(cfg.data, "train", micro_batch=cfg.train.micro_batch,
                                 global_batch=cfg.train.global_batch, rank=info.rank, world_size=info.world_size,
                                 seed=cfg.seed, pin_memory=info.device.type == "cuda", manifest=manifest)
    except (ConfigError, ShardError, ValueError) as e:
        print0(f"{'config' if isinstance(e, ConfigError) else 'data'} error: {e}")
        return 2
    run_dir = Path(cfg.run.dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
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
        start = resume(cfg, engine, loader, manifest, info)
    except CheckpointError as e:
        print0(f"resume error: {e}")
        return 2
    state = TrainState(step=start, last_saved=start)

    # ------------------------------------------------------------------ loop
    logger = RunLogger(run_dir, enabled=info.is_main, start_step=state.step, max_steps=cfg.train.max_steps)
    if state.step == 0:
        logger.text("config", "```\n" + config.to_toml(cfg) + "\n```")
    stop, meter, progress, batches = StopFlag(), LossMeter(), Progress(cfg, info), forever(loader)
    exit_code = 0
    engine.train()
    while state.step < cfg.train.max_steps:
        grad_norm, wait = train_step(engine, batches, accumulation, cfg, info, meter)
        state.step += 1
        progress.windows, progress.data_wait = progress.windows + cfg.train.global_batch, progress.data_wait + wait
        if state.step % cfg.log.every == 0 or state.step == cfg.train.max_steps:
            logger.scalars(state.step, progress.scalars(meter, engine, grad_norm, loader.epoch), console=True)
        if cfg.train.val_every and state.step % cfg.train.val_every == 0 and state.step < cfg.train.max_steps:
            val = validate(engine, cfg, manifest, info, stop)
            if val:
                logger.scalars(state.step, val)
                print0(f"validation at step {state.step}: loss {val['val/loss']:.4f}")
        if info.is_main and cfg.log.sample_every and state.step % cfg.log.sample_every == 0:
            log_samples(engine.module, manifest.styles, manifest.representation, logger, state.step,
                        bars=cfg.log.sample_bars, seed=cfg.seed)
        preempted = stop.agreed()  # one collective per optimizer step: all ranks decide together
        periodic = cfg.checkpoint.every > 0 and state.step % cfg.checkpoint.every == 0
        if preempted or periodic or state.step == cfg.train.max_steps:
            if state.step != state.last_saved:
                save_checkpoint(cfg, state, engine, loader, manifest, info)
            logger.flush()
        if preempted:
            print0(f"preempted ({stop.signal_name or 'signal on another rank'}): saved step {state.step}, "
                   f"exiting {PREEMPTED_EXIT}")
            exit_code = PREEMPTED_EXIT
            break
    if exit_code == 0:
        val = validate(engine, cfg, manifest, info, stop)
        if val:
            logger.scalars(state.step, val)
            print0(f"final validation at step {state.step}: loss {val['val/loss']:.4f}")
        print0(f"done: {state.step} steps; checkpoints and TensorBoard in {run_dir} (tensorboard --logdir {run_dir})")
    logger.close()
    dist.barrier()
    dist.destroy()
    return exit_code


if __name__ == "__main__":
    code = main()
    # Everything is saved, closed and flushed by now. Skip interpreter teardown: with gloo, a C++ thread still joinable
    # at finalisation aborts the process ("terminate called without an active exception") about one run in three,
    # which torchrun would report as a failed job after a successful run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
