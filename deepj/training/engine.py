"""The one seam between the training loop and data parallelism: the `Engine` protocol, and its DDP implementation.

`DDPEngine` wraps torch DDP (or nothing, in one process); `DeepSpeedEngine` (engine_deepspeed.py) wraps a DeepSpeed
engine. Both implement `Engine` with the same types, and `build_engine` picks one from `train.backend`, so the
training loop never asks which backend it runs.

Accumulation: the loop calls `backward(loss)` once per micro-batch with the micro-batch's mean loss and `step()` once
per optimizer step. The engine divides by the accumulation count (DDP then averages over ranks), so the gradient is the
mean over the global batch: exactly what one process computes on the whole global batch (tests/test_train.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from deepj.config import ConfigError
from deepj.training.dist import DistInfo
from deepj.training.optim import OptimConfig, apply_optim_config, build_optimizer, build_scheduler

if TYPE_CHECKING:
    from deepj.training.config import TrainLoopConfig

Precision = Literal["fp32", "bf16", "fp16"]


class Engine(Protocol):
    """What the training loop needs of a data-parallel backend. `module` is the bare model (for samples, metadata)."""

    module: nn.Module

    def __call__(self, prev: Tensor, target: Tensor, beat: Tensor, style: Tensor) -> Tensor:
        """(B, T, N, 3) previous notes, (B, T, N, 3) targets, (B, T) beats, (B, S) style -> (B, T, N, 3) outputs."""

    def no_sync(self) -> contextlib.AbstractContextManager[None]:
        """Around a micro-batch that is not the last of its optimizer step: no gradient all-reduce."""

    def backward(self, loss: Tensor) -> None:
        """Once per micro-batch, with that micro-batch's mean loss; the engine divides by the accumulation count."""

    def step(self) -> Tensor:
        """Once per optimizer step; returns the global gradient norm before clipping as a 0-d tensor on the device
        (reading it waits for the device). The same as `clip_gradients` then `apply_step`."""

    def clip_gradients(self) -> Tensor | None:
        """The first half of `step`: unscale and clip this step's gradients, nothing applied yet. Returns the global
        gradient norm before clipping (0-d, on the device), or None where the backend knows it only inside its own
        step (DeepSpeed ZeRO 1/2). The trainer checks it here, before a non-finite gradient reaches the weights."""

    def apply_step(self) -> Tensor:
        """The second half of `step`: the optimizer and schedule step; returns the gradient norm (as `step`)."""

    def reapply_optim(self, optim: OptimConfig, max_steps: int) -> tuple[float, float]:
        """After a resume: the config's optimizer hyperparameters replace the checkpoint's (see
        `optim.apply_optim_config`). Returns the learning rate of the next step (checkpoint's, config's)."""

    def train(self) -> None: ...

    def eval(self) -> None: ...

    def lr(self) -> float: ...

    def state_dict(self) -> dict:
        """What rank 0 writes into train.pt; always holds the full model weights under "model"."""

    def load_state_dict(self, state: dict) -> None: ...

    def save_collective(self, tmp_dir: Path) -> None:
        """Every rank, inside the checkpoint's temporary folder, before it is marked complete."""

    def load_collective(self, ckpt_dir: Path) -> None:
        """Every rank, on resume, after `load_state_dict`."""

    def compute_dtypes(self) -> set[torch.dtype]:
        """The dtypes the model's LSTMs really compute in (what the precision setting does on this device)."""


def build_engine(model: nn.Module, train: TrainLoopConfig, optim: OptimConfig, info: DistInfo,
                 accumulation: int) -> Engine:
    """The optimizer, its schedule and the backend named by `train.backend` around `model`."""
    optimizer = build_optimizer(model.parameters(), optim)
    scheduler = build_scheduler(optimizer, optim, train.max_steps)
    if train.backend == "deepspeed":
        from deepj.training.engine_deepspeed import DeepSpeedEngine

        return DeepSpeedEngine(model, optimizer, scheduler, train=train, grad_clip=optim.grad_clip, info=info,
                               accumulation=accumulation)
    return DDPEngine(model, optimizer, scheduler, device=info.device, distributed=info.distributed,
                     accumulation=accumulation, precision=train.precision, grad_clip=optim.grad_clip)


def autocast_dtype(precision: Precision) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def resolve_precision(precision: Precision | Literal["auto"], device: torch.device) -> Precision:
    """`auto` -> bf16 where the device computes bf16 natively, else fp32; other values are returned as they are.

    Native: a CUDA GPU with bf16 support, or a CPU with bf16 instructions (AVX512-BF16 / AMX: oneDNN's check). A CPU
    that would emulate bf16 gains nothing from it (speeds: docs/benchmarks.md, training step on CPU).
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def check_precision(precision: Precision, device: torch.device) -> None:
    """ConfigError (a ValueError) naming the key: training checks it at start, the engines again when built."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision=fp16 needs CUDA (fp16 autocast with a GradScaler) and this run's device "
                          f"is {device.type}; on CPU use train.precision=fp32 or bf16")


class DDPEngine:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        *,
        device: torch.device,
        distributed: bool,
        accumulation: int,
        precision: Precision = "fp32",
        grad_clip: float = 0.0,
    ):
        check_precision(precision, device)
        self.module = model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.device, self.accumulation, self.precision, self.grad_clip = device, accumulation, precision, grad_clip
        device_ids = [device.index] if device.type == "cuda" else None
        self.wrapped = DistributedDataParallel(model, device_ids=device_ids) if distributed else model
        # fp16 needs loss scaling; bf16 has fp32's exponent range and does not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self._norm: torch.Tensor | None = None  # clip_gradients -> apply_step

    def __call__(self, *args, **kwargs):
        dtype = autocast_dtype(self.precision)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            return self.wrapped(*args, **kwargs)

    def no_sync(self):
        """Skip the gradient all-reduce for a micro-batch that is not the last of its optimizer step."""
        return self.wrapped.no_sync() if isinstance(self.wrapped, DistributedDataParallel) else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.accumulation).backward()

    def step(self) -> torch.Tensor:
        """Clip, step, update the scale and the learning rate; returns the global gradient norm before clipping, as a
        0-d tensor on the device (reading it waits for the device)."""
        self.clip_gradients()
        return self.apply_step()

    def clip_gradients(self) -> torch.Tensor:
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.module.parameters() if p.grad is not None]
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        self._norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return self._norm

    def apply_step(self) -> torch.Tensor:
        norm, self._norm = self._norm, None
        self.scaler.step(self.optimizer)  # skipped by the scaler when fp16 gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return norm

    def reapply_optim(self, optim: OptimConfig, max_steps: int) -> tuple[float, float]:
        return apply_optim_config(self.optimizer, self.scheduler, optim, max_steps)

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def save_collective(self, tmp_dir: Path) -> None:
        pass  # everything is in state_dict, which rank 0 writes

    def load_collective(self, ckpt_dir: Path) -> None:
        pass

    def compute_dtypes(self) -> set[torch.dtype]:
        return lstm_compute_dtypes(self.module, self.device, self.precision)


def lstm_compute_dtypes(module: nn.Module, device: torch.device, precision: Precision) -> set[torch.dtype]:
    """The dtypes the model's LSTMs actually compute in under `precision`, from one tiny forward
    (docs/design.md, distributed pitfall 15).

    Autocast decides per op: on CPU, bf16 autocast runs LSTMs in bf16; on CUDA, ATen's autocast casts cuDNN RNNs to
    float16 even under bf16 autocast, so a bf16 run there gets fp16 LSTMs (without a GradScaler). Training prints
    what this returns, so a run states what its precision setting really does.
    """
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out[0].dtype))
             for m in module.modules() if isinstance(m, nn.LSTM)]
    dtype = autocast_dtype(precision)
    notes = torch.zeros(1, 2, module.cfg.num_notes, 3, device=device)  # (B, T, N, 3)
    beat = torch.zeros(1, 2, dtype=torch.long, device=device)  # (B, T)
    style = torch.zeros(1, module.cfg.num_styles, device=device)  # (B, S)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            module(notes, notes, beat, style)
    finally:
        module.train(was_training)
        for h in hooks:
            h.remove()
    return seen
