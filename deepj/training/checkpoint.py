"""Checkpoints that survive kills: write into a temporary folder, fsync, barrier, mark complete, rename, point `latest`.

Layout of a run folder:
    step-00001000/            a complete checkpoint (renamed into place only after every rank's file is on disk)
        meta.json             what the checkpoint is (`CheckpointMeta`): model config, styles, pitch range, step, world
                              size, manifest hash, resolved config. Plain JSON: `cat` it, no torch needed
        train.pt              the engine's state (model, optimizer, LR schedule, GradScaler) and the loader's position
        rank-00000.pt ...     per rank: RNG states (torch, CUDA, numpy, random)
        COMPLETE              JSON: step, world size, each file's size and sha256; written last, inside the folder
    step-00002000.tmp/        a save in progress, or one killed mid-way: never chosen for resume
    latest                    the name of the newest complete checkpoint (a hint; resume scans and verifies anyway)
    .lock                     flock'ed by the training that uses the folder (its pid and host inside)

Every load uses `torch.load(weights_only=True)`: a checkpoint can hold tensors and plain containers, never code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepj.config import ConfigError, from_dict, require
from deepj.data.shards import sha256_file
from deepj.folder_lock import LOCK, FolderBusy, lock_folder
from deepj.model import DeepJ, ModelConfig
from deepj.music.representation import ReprConfig
from deepj.music.styles import StyleTree
from deepj.training import dist

STEP_RE = re.compile(r"^step-(\d{8})$")
COMPLETE = "COMPLETE"
SHARED = "train.pt"
META = "meta.json"
META_VERSION = 1


@dataclass
class CheckpointConfig:
    every: int = 500  # optimizer steps between checkpoints; one is always written at the end
    keep: int = 3  # complete checkpoints kept (older ones are deleted after a new one is complete)
    resume: str = "auto"  # "auto": newest complete checkpoint in run.dir, if any; "none": start fresh; or a step folder

    def __post_init__(self) -> None:
        require(self.every >= 0, "checkpoint.every", "at least 0 (0 = only at the end)", self.every)
        require(self.keep >= 1, "checkpoint.keep", "at least 1 (the newest checkpoint is always kept)", self.keep)


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the folder and the reason."""


@dataclass
class CheckpointMeta:
    """What a checkpoint holds, beside its tensors: everything `load_model`, generation, evaluation and resume need.

    `kind` says which entry wrote it ("train": `deepj.train`; "bl2012": `deepj.bench bl2012`); `config` is that
    entry's resolved config as a plain dict, for the record and for options that belong to the run (data.seq_len).
    """

    step: int
    world_size: int
    kind: str
    backend: str
    model: ModelConfig
    styles: StyleTree
    representation: ReprConfig
    manifest_hash: str  # the corpus the weights were trained on (`Manifest.hash`, or the BL2012 file's checksum)
    config: dict[str, Any]
    tool: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"meta_version": META_VERSION, "tool": self.tool, "kind": self.kind, "step": self.step,
                "world_size": self.world_size, "backend": self.backend, "manifest_hash": self.manifest_hash,
                "model": dataclasses.asdict(self.model), **self.styles.to_json(),
                "representation": self.representation.to_json(),
                "config": self.config}

    @classmethod
    def from_json(cls, d: dict[str, Any], where: Path) -> CheckpointMeta:
        try:
            rep = d["representation"]
            return cls(step=int(d["step"]), world_size=int(d["world_size"]), kind=str(d.get("kind", "train")),
                       backend=str(d.get("backend", "ddp")), model=from_dict(ModelConfig, d["model"], "model."),
                       styles=StyleTree.from_leaves(list(d["styles"])),
                       representation=ReprConfig.from_json(rep),
                       manifest_hash=str(d["manifest_hash"]), config=dict(d.get("config", {})),
                       tool=str(d.get("tool", "")))
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise CheckpointError(f"{where}: checkpoint metadata is malformed ({type(e).__name__}: {e})") from None

    def write(self, folder: Path) -> None:
        path = folder / META
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.to_json(), indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, ckpt: Path) -> CheckpointMeta:
        """From `meta.json`; a checkpoint written before meta.json existed has the same facts inside train.pt."""
        path = Path(ckpt) / META
        if path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{path} is unreadable ({e})") from None
            return cls.from_json(raw, path)
        legacy = load_shared(Path(ckpt))
        if "config" not in legacy:
            raise CheckpointError(f"{ckpt} has neither {META} nor metadata inside {SHARED}; it was not written by "
                                  "deepj.train or deepj.bench bl2012: train again, or point at another checkpoint")
        model = legacy["config"]["model"]
        kind = "bl2012" if "bl2012" in legacy["config"] else "train"
        return cls.from_json({**legacy, "model": model, "kind": kind,
                              "backend": legacy["engine"].get("backend", "ddp")}, Path(ckpt) / SHARED)


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"step-{step:08d}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_pt(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def rng_state() -> dict[str, Any]:
    """Every RNG a rank draws from, in weights_only-loadable form (tensors, ints, tuples)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "random": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))


def _fault_point(where: str, step: int) -> None:
    """Test hook: `DEEPJ_FAULT=<where>:<step>:<rank>` SIGKILLs that rank at that point of that save.

    Lets tests kill a rank in the middle of a save deterministically (tests/test_fault_tolerance.py); unset, it costs
    one dictionary lookup per save.
    """
    spec = os.environ.get("DEEPJ_FAULT")
    if spec and spec == f"{where}:{step}:{dist.info().rank}":
        os.kill(os.getpid(), signal.SIGKILL)


def save(run_dir: str | Path, step: int, shared: dict[str, Any] | None, rank_state: dict[str, Any], keep: int,
         collective_write: Callable[[Path], None] | None = None, meta: CheckpointMeta | None = None) -> Path:
    """Collective: every rank calls it at the same step. `shared` and `meta` are written by rank 0 only (they may be
    None elsewhere).

    `collective_write(tmp_dir)` lets a backend with its own collective save (DeepSpeed) write into the same folder
    before the checkpoint is marked complete.
    """
    info = dist.info()
    run_dir = Path(run_dir)
    final, tmp = step_dir(run_dir, step), step_dir(run_dir, step).with_suffix(".tmp")
    if info.is_main:
        if tmp.exists():  # left by a save that was killed: never trusted, always rewritten
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    _save_pt(rank_state, tmp / f"rank-{info.rank:05d}.pt")
    _fault_point("after-rank-file", step)
    if collective_write is not None:
        collective_write(tmp)
    if info.is_main:
        _save_pt(shared, tmp / SHARED)
        if meta is not None:
            meta.write(tmp)
    dist.barrier()  # every rank's file is on disk before the checkpoint may be marked complete
    if info.is_main:
        found = [p for p in sorted(tmp.rglob("*")) if p.is_file()]
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in found}
        # Sizes catch a cut-short file; checksums catch one that changed after the save (a flipped bit, a copy gone
        # wrong). Hashing costs a read of what was just written (MBs for deepj's models), once per save.
        sums = {str(p.relative_to(tmp)): sha256_file(p) for p in found}
        marker = {"step": step, "world_size": info.world_size, "files": files, "sha256": sums}
        _fault_point("before-complete", step)
        (tmp / COMPLETE).write_text(json.dumps(marker, indent=1))
        _fsync_file(tmp / COMPLETE)
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again after a resume from an earlier one
            shutil.rmtree(final)
        tmp.rename(final)
        _fault_point("before-latest", step)
        _fsync_dir(run_dir)
        latest_tmp = run_dir / "latest.tmp"
        latest_tmp.write_text(final.name + "\n")
        _fsync_file(latest_tmp)
        latest_tmp.replace(run_dir / "latest")
        _fsync_dir(run_dir)
        _prune(run_dir, keep)
    dist.barrier()
    return final


def _prune(run_dir: Path, keep: int) -> None:
    # Sizes only: hashing every kept checkpoint at every save would cost keep x the checkpoint's size each time.
    complete = [p for p in list_checkpoints(run_dir) if _verify(p, checksums=False) is None]
    for old in complete[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Step folders (complete or not), newest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and STEP_RE.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)), reverse=True)


def _verify(path: Path, checksums: bool = True) -> str | None:
    """None if `path` is a complete checkpoint, else the reason it is not. With `checksums`, every file the COMPLETE
    marker lists a sha256 for is hashed and compared (markers written before checksums existed list none: those
    checkpoints are checked by size only)."""
    marker = path / COMPLETE
    if not marker.is_file():
        return "no COMPLETE marker (a save that did not finish)"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable COMPLETE marker ({e})"
    if not isinstance(meta, dict):
        return "COMPLETE marker is not a JSON object"
    for name, size in meta.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, COMPLETE says {size}"
    if SHARED not in meta.get("files", {}):
        return f"{SHARED} not listed in COMPLETE"
    if checksums:
        for name, want in meta.get("sha256", {}).items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            got = sha256_file(f)
            if got != want:
                return f"{name} has sha256 {got[:12]}..., COMPLETE says {want[:12]}... (changed since the save)"
    return None


def find_latest(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint and a line for each newer one that was skipped, with the reason."""
    skipped = []
    for path in list_checkpoints(run_dir):
        reason = _verify(path)
        if reason is None:
            return path, skipped
        skipped.append(f"skipping {path}: {reason}")
    return None, skipped


def resolve(path_or_run: str | Path) -> Path:
    """A step folder, or a run folder (-> its newest complete checkpoint). Raises CheckpointError with the reason."""
    p = Path(path_or_run)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist (expected a run folder or a step-NNNNNNNN checkpoint folder)")
    if STEP_RE.match(p.name):
        reason = _verify(p)
        if reason:
            raise CheckpointError(f"{p} is not a complete checkpoint: {reason}")
        return p
    latest, skipped = find_latest(p)
    if latest is None:
        detail = "; ".join(skipped) if skipped else "no step-NNNNNNNN folders"
        raise CheckpointError(f"no complete checkpoint in {p} ({detail})")
    return latest


def load_shared(ckpt: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return _load_pt(ckpt / SHARED, map_location)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[DeepJ, CheckpointMeta, Path]:
    """A run folder (its newest complete checkpoint) or a step folder -> (model in eval mode, its metadata, the step
    folder). The one way from a checkpoint to a model: generation, evaluation, samples and benchmarks use it."""
    ckpt = resolve(path)
    meta = CheckpointMeta.load(ckpt)
    model = DeepJ(meta.model).to(device)
    model.load_state_dict(load_shared(ckpt, map_location=device)["engine"]["model"])
    return model.eval(), meta, ckpt


def load_rank(ckpt: Path, rank: int) -> dict[str, Any] | None:
    """This rank's state, or None when the checkpoint was written by fewer ranks (an elastic resume)."""
    path = ckpt / f"rank-{rank:05d}.pt"
    return _load_pt(path, "cpu") if path.is_file() else None


def _load_pt(path: Path, map_location) -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 (UnpicklingError for code, RuntimeError for a bad zip, ...: all refused)
        raise CheckpointError(f"refusing to load {path}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None



_LOCK_FD: int | None = None  # this process's lock on its run folder (rank 0 of a training)


def _drop_lock_in_child() -> None:
    # A forked child (a DataLoader worker) shares the lock's open file description, and a flock lasts until the last
    # descriptor of it closes: a worker outliving a killed trainer by a few seconds would hold the folder. Children
    # close their copy; only the trainer holds the lock.
    global _LOCK_FD
    if _LOCK_FD is not None:
        with contextlib.suppress(OSError):
            os.close(_LOCK_FD)
        _LOCK_FD = None


os.register_at_fork(after_in_child=_drop_lock_in_child)


def lock_run_dir(run_dir: str | Path) -> None:
    """Take `<run_dir>/.lock` for this process's life (rank 0 of a training, before it writes anything there).

    Raises CheckpointError naming the holder when another training holds it. On a filesystem without flock support,
    warns and goes on.
    """
    global _LOCK_FD
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        _LOCK_FD = lock_folder(run_dir, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}")
    except FolderBusy as e:
        holder = str(e) or "a process that has not written its pid yet"
        raise CheckpointError(f"{run_dir} is in use by another training ({holder}; {run_dir / LOCK} is locked): wait "
                              "for it to end or stop it, or choose another run.dir") from None
    if _LOCK_FD is None:
        print(f"warning: cannot lock {run_dir / LOCK}: nothing stops a second training on {run_dir}", file=sys.stderr,
              flush=True)


def unlock_run_dir() -> None:
    global _LOCK_FD
    if _LOCK_FD is not None:
        os.close(_LOCK_FD)  # closing the descriptor releases the flock; the file stays for the next run
        _LOCK_FD = None
