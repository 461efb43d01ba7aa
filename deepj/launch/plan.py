"""`python -m deepj.launch plan --config X [key=value ...]`: what a run will need, before anything is submitted.

Parameters (the model built from the config, with num_notes/num_styles from the data's manifest when data.dir has one),
estimated peak GPU memory per rank, host memory per loader worker, shards vs ranks x workers, checkpoint size and write
time, steps per epoch, and warnings. Every estimate's formula is written next to the code that computes it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepj.data.windows import NOTE_COST, PIECE_COST
from deepj.music.constants import NUM_CHANNELS

if TYPE_CHECKING:
    from deepj.data.manifest import Manifest

GIB = 2**30
CUDA_CONTEXT_BYTES = 512 * 2**20  # CUDA context + cuDNN/cuBLAS handles: outside torch's allocator, ~0.3-0.6 GiB
LSTM_RESERVE = 6  # cuDNN keeps, per step and sequence, ~6 x hidden floats for backward: 4 gates, c, tanh(c)
PREFETCH_FACTOR = 2  # torch DataLoader default: batches in flight per worker
ASSUMED_DISK_BPS = 200e6  # when the disk is not probed
SIGNAL_LEAD_S = 180  # slurm/train.sbatch: USR2 this long before the time limit


def half(precision: str) -> bool:
    return precision in ("bf16", "fp16")


# ---------------------------------------------------------------------------------------------------- memory (GPU)

def activation_layout(m) -> dict[str, float]:
    """Saved-for-backward bytes per (window step, note) cell in fp32, as (floats, mask bytes), for ModelConfig `m`.

    Per cell (B x T x N of them; F = m.num_features, C = conv_filters, R = LSTM_RESERVE):
      inputs and time features:  3 (the window's notes) + 3 (padded conv input) + C (tanh of the conv, kept by tanh)
      each time LSTM layer l:    W_l (its input, x + style) + H_t (output) + R*H_t (cuDNN reserve);  W_0 = F
      each note LSTM layer l:    W'_l + H_n + R*H_n;  W'_0 = H_t + 3 (time output + lower neighbour's target)
      head and loss:             H_n (head input) + 3 (output) + 1 (sigmoid) + 4 (loss terms)
    Dropout masks are bytes (torch keeps a bool mask): 3 + C on the inputs, and per layer W_l (style dropout, applied
    after the broadcast over notes/steps) + H (output dropout). Concatenations, views and additions keep nothing.
    """
    ht, hn = m.time_hidden, m.note_hidden
    time_in = [m.num_features] + [ht] * (m.time_layers - 1)
    note_in = [ht + NUM_CHANNELS] + [hn] * (m.note_layers - 1)
    floats = 3 + 3 + m.conv_filters
    floats += sum(w + ht + LSTM_RESERVE * ht for w in time_in)
    floats += sum(w + hn + LSTM_RESERVE * hn for w in note_in)
    floats += hn + 3 + 1 + 4
    masks = 3 + m.conv_filters + 3 + sum(w + ht for w in time_in) + sum(w + hn for w in note_in)
    largest_layer = max([w + ht + LSTM_RESERVE * ht for w in time_in] + [w + hn + LSTM_RESERVE * hn for w in note_in])
    return {"floats": floats, "mask_bytes": masks, "largest_layer_floats": largest_layer}


def gpu_memory(m, params: int, *, micro_batch: int, seq_len: int, precision: str, backend: str, zero_stage: int,
               world: int, optimizer_states: int = 2) -> dict[str, int]:
    """Estimated peak bytes on one rank (what torch.cuda.max_memory_allocated would report, plus the CUDA context).

    P = params, W = world, s = ZeRO stage, e = bytes per activation element (4; 2 under bf16/fp16 autocast):
      DDP:        weights 4P + grads 4P + DDP buckets 4P (W > 1; grads are copied into buckets) + optimizer 4P x 2
                  (Adam/NAdam moments) + autocast weight copies 2P (bf16/fp16)
      DeepSpeed:  weights 4P (2P in bf16/fp16) + fp32 master 4P (half precision, or s >= 1; / W when s >= 1)
                  + grads 4P (2P in half precision; / W when s = 2) + optimizer 8P (/ W when s >= 1)
      activations: cells (micro_batch x seq_len x num_notes) x (floats x e + mask bytes), activation_layout()
      backward:    the largest LSTM layer's saved floats again, for the gradients alive while it is back-propagated
    """
    p = params
    e = 2 if half(precision) else 4
    out: dict[str, int] = {}
    if backend == "deepspeed":
        part = world if zero_stage >= 1 else 1
        out["weights"] = (2 if half(precision) else 4) * p
        out["fp32_master"] = (4 * p // part) if (half(precision) or zero_stage >= 1) else 0
        out["grads"] = (2 if half(precision) else 4) * p // (world if zero_stage >= 2 else 1)
        out["optimizer"] = 4 * optimizer_states * p // part
    else:
        out["weights"] = 4 * p
        out["grads"] = 4 * p
        out["ddp_buckets"] = 4 * p if world > 1 else 0
        out["optimizer"] = 4 * optimizer_states * p
        out["autocast_copies"] = 2 * p if half(precision) else 0
    lay = activation_layout(m)
    cells = micro_batch * seq_len * m.num_notes
    out["activations"] = int(cells * (lay["floats"] * e + lay["mask_bytes"]))
    out["backward_transient"] = int(cells * lay["largest_layer_floats"] * e)
    out["cuda_context"] = CUDA_CONTEXT_BYTES
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------------------------------------------- data

def split_summary(manifest: Manifest, split: str, seq_len: int, stride: int) -> dict[str, int]:
    """Shards, pieces, windows (the loader's windowing, deepj.data.manifest.windows_per_piece), bytes and notes of a
    split; all zero for a split with no shards."""
    from deepj.data.manifest import windows_per_piece

    shards = [s for s in manifest.shards if s.split == split]
    steps = manifest.piece_steps(split) if shards else np.zeros(0, dtype=np.int64)
    return {"shards": len(shards), "pieces": len(steps),
            "windows": int(windows_per_piece(steps, seq_len, stride).sum()),
            "bytes": sum(s.bytes for s in shards), "notes": sum(s.notes for s in shards)}


def loader_worker_memory(manifest: Manifest | None, data_cfg, micro_batch: int, num_notes: int,
                         num_styles: int) -> dict[str, int]:
    """Host bytes one loader worker holds (data.workers = 0: the trainer process holds the same).

    cache:   `data.cache_mb` of decoded pieces (deepj/data/windows.py), or the whole split decoded when smaller, plus
             the catalogue: 10 bytes a piece of the manifest's columns and 4 of the epoch's permutation.
    batches: PREFETCH_FACTOR micro-batches in flight: notes (B, L+1, N, 3) float32 + beat (B, L) int64 + style
             (B, S) float32 + window (B, 3) int64.
    The Python/torch process itself (~150-300 MB, mostly shared with its parent after fork) comes on top.
    """
    b, length = micro_batch, data_cfg.seq_len
    batch = b * (length + 1) * num_notes * 3 * 4 + b * length * 8 + b * num_styles * 4 + b * 3 * 8
    cache = data_cfg.cache_bytes
    if manifest is not None:
        train = [s for s in manifest.shards if s.split == "train"]
        pieces = sum(s.pieces for s in train)
        cache = min(cache, sum(NOTE_COST * s.notes + PIECE_COST * s.pieces for s in train)) + 14 * pieces
    return {"cache": cache, "batches": PREFETCH_FACTOR * batch, "total": cache + PREFETCH_FACTOR * batch}


# ---------------------------------------------------------------------------------------------------- checkpoints

def checkpoint_bytes(params: int, *, backend: str, precision: str, world: int, optimizer_states: int = 2) -> int:
    """Bytes of one step folder (deepj/training/checkpoint.py layout).

    DDP:       train.pt = weights 4P + optimizer 4P x 2 (+ counters) ; rank-NNNNN.pt ~ 10 KB each (RNG states)
    DeepSpeed: train.pt = full weights 4P (for generate) + DeepSpeed's files: module 4P (2P in bf16/fp16) and the
               optimizer's fp32 master 4P + moments 8P over all ranks (partitioned, so the total does not grow with W)
    """
    per_rank = 10_000 * world
    if backend == "deepspeed":
        return 4 * params + (2 if half(precision) else 4) * params + (4 + 4 * optimizer_states) * params + per_rank
    return 4 * params + 4 * optimizer_states * params + per_rank


def probe_write_bps(folder: Path, size: int = 32 * 2**20) -> float:
    """Bytes per second of a fsync'ed write into `folder` (the nearest existing parent of the run folder)."""
    block = os.urandom(2**20)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".deepj-disk-probe-") as f:
        t0 = time.perf_counter()
        for _ in range(size // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
        return size / max(time.perf_counter() - t0, 1e-6)


# ---------------------------------------------------------------------------------------------------- the plan

def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _zero_stage(path: str) -> int | None:
    try:
        return int(json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage", 0))
    except (OSError, ValueError, AttributeError):
        return None


def _gpu_memory_here() -> int | None:
    try:
        import torch

        if torch.cuda.is_available():
            return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 (a broken CUDA set-up is doctor's business; the plan goes on without it)
        return None
    return None


def make_plan(cfg, *, nodes: int = 1, gpus_per_node: int = 1, gpu_memory_bytes: int | None = None,
              probe_disk: bool = True) -> dict[str, Any]:
    """Everything `plan` prints, as a dict (also `plan --json`). `cfg` is a resolved TrainConfig."""
    from deepj.config import ConfigError
    from deepj.data.loader import accumulation_steps
    from deepj.data.manifest import Manifest, ShardError
    from deepj.model import DeepJ

    world = nodes * gpus_per_node
    warnings: list[str] = []
    errors: list[str] = []  # deepj.train would refuse to start: `run` does not launch
    manifest = None
    m = cfg.model
    if Path(cfg.data.dir, "manifest.json").is_file():
        try:
            manifest = Manifest.load(cfg.data.dir)
        except ShardError as e:
            warnings.append(f"data.dir: {e}")
    else:
        warnings.append(f"data.dir={cfg.data.dir} has no manifest.json: sizes use model.num_notes={m.num_notes} and "
                        f"model.num_styles={m.num_styles}, and nothing about the data is checked (preprocess first)")
    if manifest is not None:
        m = dataclasses.replace(m, num_notes=manifest.num_notes, num_styles=manifest.styles.num_styles)
    model = DeepJ(m)
    params = sum(p.numel() for p in model.parameters())
    tcfg = cfg.train
    zero = _zero_stage(tcfg.deepspeed_config) if tcfg.backend == "deepspeed" else None
    if tcfg.backend == "deepspeed":
        if zero is None:
            warnings.append(f"train.deepspeed_config={tcfg.deepspeed_config} is missing or not JSON (see "
                            "launcher/ds_zero*.json); memory assumes ZeRO stage 1")
        if importlib.util.find_spec("deepspeed") is None:
            warnings.append("train.backend=deepspeed but DeepSpeed is not installed here "
                            "(pip install -e '.[deepspeed]')")
    mem = gpu_memory(m, params, micro_batch=tcfg.micro_batch, seq_len=cfg.data.seq_len, precision=tcfg.precision,
                     backend=tcfg.backend, zero_stage=zero if zero is not None else 1, world=world)

    # batch arithmetic: global = micro x accumulation x world (deepj/train.py refuses anything else)
    try:
        accumulation: int | None = accumulation_steps(tcfg.global_batch, tcfg.micro_batch, world)
    except ConfigError as e:
        accumulation = None
        fits = [b for b in range(1, tcfg.global_batch + 1) if tcfg.global_batch % (b * world) == 0]
        hint = (f"e.g. train.micro_batch={max(fits)}" if fits else
                f"train.global_batch must be a multiple of the world size {world}")
        errors.append(f"{e}; deepj.train will refuse to start ({hint})")

    data: dict[str, Any] = {}
    if manifest is not None:
        train = split_summary(manifest, "train", cfg.data.seq_len, cfg.data.stride)
        val = split_summary(manifest, "val", cfg.data.seq_len, cfg.data.stride)
        steps_per_epoch = train["windows"] // tcfg.global_batch
        readers = world * max(cfg.data.workers, 1)
        data = {"train": train, "val": val, "steps_per_epoch": steps_per_epoch, "readers": readers,
                "epochs": tcfg.max_steps / steps_per_epoch if steps_per_epoch else None,
                # Each reader reads the pieces its windows come from, once per pool: at most the split, and the split
                # once per reader when every piece has windows on every reader (long pieces, few pools).
                "reads_per_epoch_bytes": readers * train["bytes"]}
        if train["windows"] < tcfg.global_batch:
            errors.append(f"the train split has {train['windows']} windows, fewer than one global batch "
                            f"({tcfg.global_batch}): deepj.train will refuse to start")
        val_need = tcfg.val_batches * tcfg.micro_batch * world
        if val["shards"] == 0:
            warnings.append("no val shards: validation will fail (re-run preprocess with --val-fraction > 0)")
        elif val["windows"] < val_need or val["pieces"] < 10:
            warnings.append(f"tiny val split: {val['pieces']} piece(s), {val['windows']} window(s); a validation pass "
                            f"reads {val_need} (train.val_batches x micro x world), so val loss is noisy"
                            + (" and windows repeat" if val["windows"] < val_need else ""))
    worker = loader_worker_memory(manifest, cfg.data, tcfg.micro_batch, m.num_notes, m.num_styles)

    ckpt = checkpoint_bytes(params, backend=tcfg.backend, precision=tcfg.precision, world=world)
    folder = _existing_parent(Path(cfg.run.dir))
    bps, measured = ASSUMED_DISK_BPS, False
    if probe_disk:
        try:
            bps, measured = probe_write_bps(folder), True
        except OSError as e:
            warnings.append(f"could not probe the disk at {folder} ({e.strerror or e}); assuming "
                            f"{ASSUMED_DISK_BPS / 1e6:.0f} MB/s")
    write_s = ckpt / bps
    if write_s > SIGNAL_LEAD_S / 2:
        warnings.append(f"a checkpoint takes ~{write_s:.0f} s to write: slurm/train.sbatch signals {SIGNAL_LEAD_S} s "
                        "before the time limit; raise it (sbatch --signal=B:USR2@SECONDS)")

    gpu_mem = gpu_memory_bytes if gpu_memory_bytes is not None else _gpu_memory_here()
    if gpu_mem is not None and mem["total"] > 0.9 * gpu_mem:
        warnings.append(f"estimated peak {mem['total'] / GIB:.1f} GiB per rank is over 90% of the GPU's "
                        f"{gpu_mem / GIB:.1f} GiB: lower train.micro_batch (accumulation keeps the global batch), "
                        "use train.precision=bf16, or shorten data.seq_len")
    return {
        "config": {"nodes": nodes, "gpus_per_node": gpus_per_node, "world": world, "backend": tcfg.backend,
                   "zero_stage": zero, "precision": tcfg.precision, "micro_batch": tcfg.micro_batch,
                   "global_batch": tcfg.global_batch, "accumulation": accumulation, "seq_len": cfg.data.seq_len,
                   "num_notes": m.num_notes, "num_styles": m.num_styles, "workers": cfg.data.workers},
        "params": params,
        "gpu_memory": mem,
        "gpu_memory_available": gpu_mem,
        "loader_worker_memory": worker,
        "data": data,
        "checkpoint": {"bytes": ckpt, "write_bps": bps, "measured": measured, "write_s": write_s,
                       "folder": str(folder), "every": cfg.checkpoint.every, "keep": cfg.checkpoint.keep},
        "warnings": warnings,
        "errors": errors,
    }


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < GIB else f"{n / GIB:,.2f} GiB"


def format_plan(plan: dict[str, Any]) -> str:
    c, mem, d, ck = plan["config"], plan["gpu_memory"], plan["data"], plan["checkpoint"]
    acc = c["accumulation"] if c["accumulation"] is not None else "n/a"
    lines = [
        f"layout: {c['nodes']} node(s) x {c['gpus_per_node']} = {c['world']} rank(s), backend {c['backend']}"
        + (f" (ZeRO {c['zero_stage']})" if c["backend"] == "deepspeed" else "") + f", precision {c['precision']}",
        f"batch: global {c['global_batch']} = micro {c['micro_batch']} x accumulation {acc} x world {c['world']}; "
        f"windows of {c['seq_len']} steps x {c['num_notes']} notes",
        f"parameters: {plan['params']:,} ({c['num_styles']} style slot(s))",
        "peak GPU memory per rank (estimate): " + _mb(mem["total"]),
    ]
    lines += [f"  {k:18s} {_mb(v)}" for k, v in mem.items() if k != "total" and v]
    if plan["gpu_memory_available"]:
        lines.append(f"  GPU has {_mb(plan['gpu_memory_available'])}")
    w = plan["loader_worker_memory"]
    lines.append(f"host memory per loader worker: {_mb(w['total'])} (cache {_mb(w['cache'])}, batches in flight "
                 f"{_mb(w['batches'])}) + the process itself")
    if d:
        lines.append(f"data: train {d['train']['pieces']:,} pieces / {d['train']['shards']} shard(s) / "
                     f"{d['train']['windows']:,} windows; val {d['val']['pieces']:,} pieces / {d['val']['windows']:,}"
                     " windows")
        epochs = f"{d['epochs']:.2f}" if d["epochs"] is not None else "n/a"
        lines.append(f"steps per epoch: {d['steps_per_epoch']:,} ({epochs} epochs in train.max_steps)")
        lines.append(f"readers: {d['readers']} (ranks x max(data.workers, 1)), each reading the pieces of its own "
                     f"windows: at most {_mb(d['reads_per_epoch_bytes'])} read per epoch in all")
    how = "measured" if ck["measured"] else "assumed"
    lines.append(f"checkpoint: {_mb(ck['bytes'])} every {ck['every']} steps (keep {ck['keep']}); "
                 f"~{ck['write_s']:.1f} s to write at {ck['write_bps'] / 1e6:.0f} MB/s ({how} at {ck['folder']})")
    lines += [f"error: {x}" for x in plan["errors"]]
    lines += [f"warning: {x}" for x in plan["warnings"]] or ["no warnings"]
    return "\n".join(lines)
