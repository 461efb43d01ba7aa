"""DeepSpeed behind the same `Engine` protocol as DDP (deepj/training/engine.py), with its own collective checkpoint.

Our config stays the single source of truth: micro-batch, accumulation, global batch, gradient clipping and precision
are written into the DeepSpeed config taken from `train.deepspeed_config` (ZeRO stage and the like), so the two can
never disagree. DeepSpeed divides the loss by its accumulation count itself (`backward` here passes the micro-batch
mean unscaled: no double scaling), and must see `step()` after every micro-batch: it only steps the optimizer at the
accumulation boundary, so the micro-steps before it are forwarded from `backward`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from deepj.config import ConfigError
from deepj.training.dist import DistInfo
from deepj.training.engine import check_precision
from deepj.training.optim import OptimConfig, apply_optim_config

DS_TAG = "deepspeed"  # sub-folder of our step folder that holds DeepSpeed's own checkpoint


def build_ds_config(base: dict, *, micro_batch: int, accumulation: int, world_size: int, precision: str,
                    grad_clip: float) -> dict:
    cfg = dict(base)
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping", "fp16", "bf16"):
        cfg.pop(key, None)  # ours wins; the file only brings ZeRO and engine settings
    cfg.update({
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch * accumulation * world_size,
        "gradient_clipping": grad_clip,
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "bf16": {"enabled": precision == "bf16"},
    })
    return cfg


def read_ds_config(path: str | Path) -> dict:
    """The JSON of `train.deepspeed_config`; ConfigError naming the key and the file when it is missing or not a JSON
    object (training checks it at start, before anything is written)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"train.deepspeed_config={path}: no such file (see launcher/ds_zero*.json)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"train.deepspeed_config={path} is not readable JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"train.deepspeed_config={path} is not a JSON object")
    return raw


class DeepSpeedEngine:
    def __init__(self, model, optimizer, scheduler, *, train, grad_clip: float, info: DistInfo, accumulation: int):
        """`train`: the training loop's config section (micro_batch, precision, deepspeed_config)."""
        import deepspeed

        check_precision(train.precision, info.device)
        ds_cfg = build_ds_config(read_ds_config(train.deepspeed_config), micro_batch=train.micro_batch,
                                 accumulation=accumulation, world_size=info.world_size,
                                 precision=train.precision, grad_clip=grad_clip)
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
        self.module = self.ds.module
        self.precision = train.precision
        self._own: torch.Tensor | None = None  # clip_gradients -> apply_step (stage 0 only)

    def __call__(self, *args):
        # DeepSpeed's bf16/fp16 modes cast the module itself; inputs must follow its dtype (targets stay float32).
        dtype = next(self.module.parameters()).dtype
        prev, target, beat, style = args
        return self.ds(prev.to(dtype), target.to(dtype), beat, style.to(dtype))

    def no_sync(self):
        return contextlib.nullcontext()  # DeepSpeed reduces gradients only at the accumulation boundary by itself

    def backward(self, loss: torch.Tensor) -> None:
        boundary = self.ds.is_gradient_accumulation_boundary()
        self.ds.backward(loss)
        if not boundary:
            self.ds.step()  # counts the micro-step; no optimizer step before the boundary

    def step(self) -> torch.Tensor:
        self.clip_gradients()
        return self.apply_step()

    def clip_gradients(self) -> torch.Tensor | None:
        # ZeRO-1/2 and DeepSpeed's fp16 optimizer record the global norm inside their step (and skip an update whose
        # norm is not finite, in fp32 and fp16); at stage 0 the reduced gradients sit in .grad and DeepSpeed records
        # nothing, so take the norm there before the step clears them. DeepSpeed clips inside its step either way.
        self._own = None
        if self.ds.zero_optimization_stage() == 0:
            device = next(self.module.parameters()).device
            grads = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
            self._own = torch.stack(grads).norm() if grads else torch.zeros((), device=device)
        return self._own

    def apply_step(self) -> torch.Tensor:
        own, self._own = self._own, None
        self.ds.step()
        if own is not None:
            return own
        norm = self.ds.get_global_grad_norm()  # a float, a tensor or None, depending on the optimizer
        return torch.as_tensor(0.0 if norm is None else norm, dtype=torch.float32,
                               device=next(self.module.parameters()).device)

    def reapply_optim(self, optim: OptimConfig, max_steps: int) -> tuple[float, float]:
        # DeepSpeed's checkpoint restored our LambdaLR and the (ZeRO-wrapped) optimizer's groups: the same fix applies.
        return apply_optim_config(self.optimizer, self.scheduler, optim, max_steps)

    def train(self) -> None:
        self.ds.train()

    def eval(self) -> None:
        self.ds.eval()

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # Checkpointing: DeepSpeed writes its own (partitioned) files, collectively, into our temporary step folder.
    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "backend": "deepspeed"}  # full weights too, for generate

    def save_collective(self, tmp_dir: Path) -> None:
        self.ds.save_checkpoint(str(tmp_dir), tag=DS_TAG, save_latest=False)

    def load_collective(self, ckpt_dir: Path) -> None:
        path, _ = self.ds.load_checkpoint(str(ckpt_dir), tag=DS_TAG)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {ckpt_dir / DS_TAG}")

    def load_state_dict(self, state: dict) -> None:
        pass  # everything is in DeepSpeed's own files (load_collective)

    def compute_dtypes(self) -> set[torch.dtype]:
        return {next(self.module.parameters()).dtype}  # DeepSpeed casts the module itself; no autocast
