"""Train DeepJ: `torchrun --nproc_per_node=N -m deepj.train --config configs/NAME.toml [key=value ...]`.

Also `python -m deepj.train ...` for one process. Reads top to bottom: config -> distributed -> data -> model ->
engine (DDP or DeepSpeed behind `backward` / `step` / `no_sync`) -> resume -> loop. Exit status: 0 when max_steps is
reached, PREEMPTED_EXIT (75) after a coordinated checkpoint on SIGTERM/SIGUSR2, 2 for a bad config or input.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepj import checkpoint, config, dist
from deepj.config import ConfigError
from deepj.data import StreamingLoader, validation_batches
from deepj.dist import print0
from deepj.engine import resolve_precision
from deepj.loss import deepj_loss
from deepj.metrics import RunLogger, flops_per_window
from deepj.model import DeepJ
from deepj.optim import build_optimizer, build_scheduler
from deepj.preempt import PREEMPTED_EXIT, StopFlag
from deepj.samples import log_samples
from deepj.shards import ShardError, manifest_hash, read_manifest
from deepj.train_config import TrainConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m deepj.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="TOML file (configs/debug.toml, configs/demo.toml, configs/paper.toml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.dir=shards/demo train.max_steps=200")
    return p.parse_args(argv)


def to_device(batch: dict, device: torch.device) -> dict:
    """What the step reads, with `notes` copied once: prev and target are views of it on the device."""
    notes = batch["notes"].to(device, non_blocking=True)  # (B, L+1, N, 3)
    return {"prev": notes[:, :-1], "target": notes[:, 1:], "beat": batch["beat"].to(device, non_blocking=True),
            "style": batch["style"].to(device, non_blocking=True)}


def run_loss(engine, batch: dict, play_only: bool):
    # (B, T, N, 3): batch, steps, notes, {play logit, replay logit, volume}
    out = engine(batch["prev"], batch["target"], batch["beat"], batch["style"])
    return deepj_loss(out.float(), batch["target"], play_only=play_only)


def validate(engine, cfg: TrainConfig, info, stop: StopFlag) -> tuple[dict[str, float] | None, bool]:
    """Mean validation loss terms over the same number of batches on every rank; checks the stop flag per batch."""
    engine.eval()
    sums, n = torch.zeros(4, dtype=torch.float64), 0
    stopped = False
    with torch.no_grad():
        for batch in validation_batches(cfg.data, micro_batch=cfg.train.micro_batch, rank=info.rank,
                                        world_size=info.world_size, num_batches=cfg.train.val_batches):
            total, terms = run_loss(engine, to_device(batch, info.device), cfg.model.play_only)
            sums += torch.tensor([float(total), float(terms["play"]), float(terms["replay"]), float(terms["volume"])],
                                 dtype=torch.float64)
            n += 1
            if stop.agreed():  # every rank runs the same number of batches, so this collective lines up
                stopped = True
                break
    engine.train()
    if n == 0:
        return None, stopped
    mean = dist.all_reduce_mean(sums / n)
    return {f"val/{k}": float(v) for k, v in zip(("loss", "play", "replay", "volume"), mean)}, stopped


def main(argv=None) -> int:
    args = parse_args(argv)
    # ------------------------------------------------------------------ config
    try:
        cfg = config.load(TrainConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    # ------------------------------------------------------------------ distributed
    info = dist.init_distributed(cfg.run.device)
    threads = cfg.run.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size)))
    torch.set_num_threads(threads)
    if cfg.train.deterministic:
        # cuBLAS is deterministic only with a fixed workspace, set before its first use (PyTorch's reproducibility
        # notes); warn_only because some CUDA kernels have no deterministic version.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=info.device.type == "cuda")
    torch.manual_seed(cfg.seed * 1000 + info.rank)  # dropout differs across ranks, reproducibly
    np.random.seed((cfg.seed * 1000 + info.rank) % 2**32)

    # ------------------------------------------------------------------ data
    world_micro = cfg.train.micro_batch * info.world_size
    if cfg.train.global_batch % world_micro:
        print0(f"config error: train.global_batch={cfg.train.global_batch} is not a multiple of train.micro_batch "
               f"({cfg.train.micro_batch}) x world size ({info.world_size}); global batch = micro x accumulation x world")
        return 2
    accumulation = cfg.train.global_batch // world_micro
    try:
        manifest = read_manifest(cfg.data.dir)
        loader = StreamingLoader(cfg.data, "train", micro_batch=cfg.train.micro_batch, global_batch=cfg.train.global_batch,
                                 rank=info.rank, world_size=info.world_size, seed=cfg.seed,
                                 pin_memory=info.device.type == "cuda")
    except (ShardError, ValueError) as e:
        print0(f"data error: {e}")
        return 2
    repr_ = manifest["representation"]
    cfg.model = dataclasses.replace(cfg.model, num_notes=repr_["max_pitch"] - repr_["min_pitch"],
                                    num_styles=len(manifest["styles"]))
    cfg.train = dataclasses.replace(cfg.train, precision=resolve_precision(cfg.train.precision, info.device))
    run_dir = Path(cfg.run.dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(config.to_toml(cfg))
    print0(f"# resolved config ({run_dir / 'config.toml'})\n{config.to_toml(cfg)}")
    print0(f"data: {manifest['totals']['train']['pieces']} pieces, {len(manifest['styles'])} styles, "
           f"{loader.steps_per_epoch()} steps per epoch at global batch {cfg.train.global_batch} "
           f"(micro {cfg.train.micro_batch} x accumulation {accumulation} x world {info.world_size})")

    # ------------------------------------------------------------------ model
    model = DeepJ(cfg.model).to(info.device)
    n_params = sum(p.numel() for p in model.parameters())
    print0(f"model: {n_params:,} parameters on {info.device} ({info.world_size} rank(s), backend {info.backend}, "
           f"precision {cfg.train.precision})")

    # ------------------------------------------------------------------ engine: DDP or DeepSpeed, one seam
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.max_steps)
    if cfg.train.backend == "deepspeed":
        from deepj.engine_deepspeed import DeepSpeedEngine

        engine = DeepSpeedEngine(model, optimizer, scheduler, cfg=cfg, accumulation=accumulation)
    else:
        from deepj.engine import DDPEngine

        engine = DDPEngine(model, optimizer, scheduler, device=info.device, distributed=info.distributed,
                           accumulation=accumulation, precision=cfg.train.precision, grad_clip=cfg.optim.grad_clip)

    if cfg.train.backend == "ddp":
        from deepj.engine import autocast_dtype, lstm_compute_dtypes

        lstm = lstm_compute_dtypes(model, info.device, cfg.train.precision, cfg.model.num_styles, cfg.model.num_notes)
        wanted = autocast_dtype(cfg.train.precision) or torch.float32
        print0(f"precision {cfg.train.precision}: LSTMs compute in {', '.join(sorted(str(d) for d in lstm))}"
               + ("" if lstm == {wanted} else f" (not {wanted}: {info.device.type} autocast decides per op)"))

    # ------------------------------------------------------------------ resume
    step = 0
    corpus = manifest_hash(manifest)
    ckpt = None
    if cfg.checkpoint.resume == "auto":
        ckpt, skipped = checkpoint.find_latest(run_dir)
        for line in skipped:
            print0(line)
    elif cfg.checkpoint.resume != "none":
        ckpt = checkpoint.resolve(cfg.checkpoint.resume)
    if ckpt is not None:
        shared = checkpoint.load_shared(ckpt, map_location=info.device)
        if shared["manifest_hash"] != corpus:
            print0(f"resume error: {ckpt} was trained on another corpus (manifest {shared['manifest_hash']}, "
                   f"{cfg.data.dir} is {corpus}); use a new run.dir or checkpoint.resume=none")
            return 2
        if shared["config"]["model"] != dataclasses.asdict(cfg.model):
            print0(f"resume error: {ckpt} holds a model of another shape: {shared['config']['model']} "
                   f"vs {dataclasses.asdict(cfg.model)}")
            return 2
        engine.load_state_dict(shared["engine"])
        if hasattr(engine, "load_collective"):
            engine.load_collective(ckpt)
        step = shared["step"]
        mine = checkpoint.load_rank(ckpt, info.rank)
        if mine is not None:
            checkpoint.set_rng_state(mine["rng"])
        loader.load_state_dict(shared["loader"])
        print0(f"resumed from {ckpt} at step {step} (saved by {shared['world_size']} rank(s), now {info.world_size})")

    def save(at_step: int) -> None:
        shared = None
        if info.is_main:
            shared = {
                "engine": engine.state_dict(), "step": at_step, "loader": loader.state_dict(),
                "config": dataclasses.asdict(cfg), "manifest_hash": corpus, "world_size": info.world_size,
                "styles": manifest["styles"], "levels": manifest["levels"], "representation": manifest["representation"],
            }
        path = checkpoint.save(run_dir, at_step, shared, {"rng": checkpoint.rng_state()}, keep=cfg.checkpoint.keep,
                               collective_write=getattr(engine, "save_collective", None))
        print0(f"checkpoint: {path}")

    # ------------------------------------------------------------------ loop
    logger = RunLogger(run_dir, enabled=info.is_main, start_step=step, max_steps=cfg.train.max_steps)
    if step == 0:
        logger.text("config", "```\n" + config.to_toml(cfg) + "\n```")
    stop = StopFlag()
    flops_window = flops_per_window(cfg.model, cfg.data.seq_len)

    def micro_batches():
        while True:  # epochs; the loader advances its own epoch counter at each end
            yield from loader

    batches = micro_batches()
    engine.train()
    t_last, windows, data_wait = time.perf_counter(), 0, 0.0
    acc, acc_n = torch.zeros(4, dtype=torch.float64), 0  # loss terms summed over micro-batches since the last log
    exit_code = 0
    last_saved = step
    while step < cfg.train.max_steps:
        for m in range(accumulation):
            t_data = time.perf_counter()
            batch = to_device(next(batches), info.device)
            # The loop waits for the device at every micro-batch (the float() of the loss below), so time spent here
            # is time the device sits idle waiting for data.
            data_wait += time.perf_counter() - t_data
            last = m == accumulation - 1
            with engine.no_sync() if not last else contextlib.nullcontext():
                total, terms = run_loss(engine, batch, cfg.model.play_only)
                engine.backward(total)
            acc += torch.tensor([float(total.detach()), float(terms["play"]), float(terms["replay"]), float(terms["volume"])],
                                dtype=torch.float64)
            acc_n += 1
        grad_norm = engine.step()
        step += 1
        windows += cfg.train.global_batch

        if step % cfg.log.every == 0 or step == cfg.train.max_steps:
            mean = dist.all_reduce_mean(acc / acc_n)
            dt = time.perf_counter() - t_last
            scalars = {f"train/{k}": float(v) for k, v in zip(("loss", "play", "replay", "volume"), mean)}
            scalars.update({
                "train/lr": engine.lr(), "train/grad_norm": float(grad_norm), "train/epoch": loader.epoch,
                "perf/windows_per_s": windows / dt,
                "perf/note_steps_per_s": windows * cfg.data.seq_len * cfg.model.num_notes / dt,
                "perf/data_wait_frac": data_wait / dt,
            })
            if info.device.type == "cuda":
                scalars["perf/tflops_per_s_per_gpu"] = flops_window * windows / dt / info.world_size / 1e12
                scalars["perf/peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            logger.scalars(step, scalars, console=True)
            acc.zero_()
            acc_n = 0
            t_last, windows, data_wait = time.perf_counter(), 0, 0.0

        if cfg.train.val_every and step % cfg.train.val_every == 0 and step < cfg.train.max_steps:
            val, stopped = validate(engine, cfg, info, stop)
            if val:
                logger.scalars(step, val)
                print0(f"validation at step {step}: loss {val['val/loss']:.4f}")
            if stopped:
                stop.local = True
        if info.is_main and cfg.log.sample_every and step % cfg.log.sample_every == 0:
            log_samples(engine.module, manifest, logger, step, bars=cfg.log.sample_bars, seed=cfg.seed)

        preempted = stop.agreed()  # one collective per optimizer step: all ranks decide together
        periodic = cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0
        if preempted or periodic or step == cfg.train.max_steps:
            if step != last_saved:
                save(step)
                last_saved = step
            logger.flush()
        if preempted:
            print0(f"preempted ({stop.signal_name or 'signal on another rank'}): saved step {step}, exiting {PREEMPTED_EXIT}")
            exit_code = PREEMPTED_EXIT
            break

    if exit_code == 0:
        val, _ = validate(engine, cfg, info, stop)
        if val:
            logger.scalars(step, val)
            print0(f"final validation at step {step}: loss {val['val/loss']:.4f}")
        print0(f"done: {step} steps; checkpoints and TensorBoard in {run_dir} (tensorboard --logdir {run_dir})")
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
