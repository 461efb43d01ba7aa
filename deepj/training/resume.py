"""A training run's checkpoints: what it saves (`save_checkpoint`, with its `CheckpointMeta`), which one it resumes
from (`find_checkpoint`), whether it can (`check_resumable`), and loading it (`resume`). deepj/train.py calls these;
the atomic save protocol itself is deepj/training/checkpoint.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from deepj import __version__, config
from deepj.data.loader import StreamingLoader
from deepj.data.manifest import Manifest
from deepj.training import checkpoint, dist
from deepj.training.checkpoint import CheckpointError, CheckpointMeta
from deepj.training.config import TrainConfig
from deepj.training.dist import DistInfo, print0
from deepj.training.engine import Engine

# ModelConfig fields that give the weights their shapes: a resume must match them; any other change is printed.
SHAPE_FIELDS = ("num_notes", "num_styles", "style_dim", "conv_filters", "conv_kernel", "time_hidden", "time_layers",
                "note_hidden", "note_layers")


@dataclass
class TrainState:
    """Where the loop is: optimizer steps taken, and the last step saved (so no step is saved twice)."""

    step: int = 0
    last_saved: int = 0


def take_run_dir(run_dir: Path, info: DistInfo) -> str:
    """Collective. Rank 0 locks the run folder for this process's life (before anything is written there); returns
    "" or, on every rank, why it could not (another training holds it: its pid and host)."""
    refused = ""
    if info.is_main:
        try:
            checkpoint.lock_run_dir(run_dir)
        except CheckpointError as e:
            refused = str(e)
        except OSError as e:
            refused = f"cannot use run.dir={run_dir}: {e}"
    return dist.broadcast_object(refused)


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


def find_checkpoint(cfg: TrainConfig, info: DistInfo) -> Path | None:
    """The checkpoint `checkpoint.resume` names (None: start fresh). Rank 0 picks it, verifying sizes and checksums
    and printing why it skipped any newer one, and tells the other ranks: one read of the files, one choice for all.
    Raises CheckpointError (on every rank) when the named one is unusable."""
    found, error = None, None
    if info.is_main:
        try:
            ckpt = None
            if cfg.checkpoint.resume == "auto":
                ckpt, skipped = checkpoint.find_latest(cfg.run.dir)
                for line in skipped:
                    print0(line)
            elif cfg.checkpoint.resume != "none":
                ckpt = checkpoint.resolve(cfg.checkpoint.resume)
            found = None if ckpt is None else str(ckpt)
        except CheckpointError as e:
            error = str(e)
    found, error = dist.broadcast_object((found, error))
    if error is not None:
        raise CheckpointError(error)
    return None if found is None else Path(found)


def check_resumable(cfg: TrainConfig, ckpt: Path, manifest: Manifest) -> CheckpointMeta:
    """The checkpoint's metadata, if this run can continue from it; prints every config change. Raises
    CheckpointError when it cannot: another corpus, weights of another shape, another optimizer. Needs no engine, so
    training checks it before it writes anything."""
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
    if before.get("optim.name", cfg.optim.name) != cfg.optim.name:
        # The optimizer's state (Nadam's mu_product, the moments) belongs to the optimizer that wrote it.
        raise CheckpointError(f"{ckpt} holds {before['optim.name']}'s optimizer state, and optim.name is now "
                              f"{cfg.optim.name}; resume with optim.name={before['optim.name']}, or use a new run.dir")
    return meta


def resume(cfg: TrainConfig, ckpt: Path, meta: CheckpointMeta, engine: Engine, loader: StreamingLoader,
           info: DistInfo) -> int:
    """Load a checkpoint that `check_resumable` accepted into the engine, the RNGs and the loader; returns its step.
    Raises CheckpointError when a file cannot be loaded or the loader's position cannot be restored."""
    shared = checkpoint.load_shared(ckpt, map_location=info.device)  # {"engine": ..., "loader": ...}
    engine.load_state_dict(shared["engine"])
    engine.load_collective(ckpt)
    # The config is the truth: lr, betas, eps, weight decay and the schedule's base as config.toml says, from the
    # resumed step on (loading restored the checkpoint's).
    lr_saved, lr_now = engine.reapply_optim(cfg.optim, cfg.train.max_steps)
    if lr_saved != lr_now:
        print0(f"resume: learning rate of step {meta.step + 1} follows the config: {lr_saved:.6g} -> {lr_now:.6g}")
    mine = checkpoint.load_rank(ckpt, info.rank)
    if mine is not None:
        checkpoint.set_rng_state(mine["rng"])
    position = shared["loader"]
    changes = loader.position_changes(position)
    if changes:
        # The saved position counts windows of another order; replaying it would repeat and skip windows silently.
        loader.restart_at_epoch(int(position["epoch"]) + 1)
        print0(f"resume: the data position of {ckpt} (epoch {position['epoch']}, {position['consumed']} windows in) "
               f"does not carry over ({'; '.join(changes)}); the data order starts afresh at epoch {loader.epoch}")
    else:
        try:
            loader.load_state_dict(position)
        except ValueError as e:
            raise CheckpointError(f"{ckpt}: the loader's position cannot be restored: {e}") from None
    print0(f"resumed from {ckpt} at step {meta.step} (saved by {meta.world_size} rank(s), now {info.world_size})")
    return meta.step
