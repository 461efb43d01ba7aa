"""Optimizer and learning-rate schedule: Nadam as in the paper's Keras code by default, AdamW as an option."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch

from deepj.config import require


@dataclass
class OptimConfig:
    name: Literal["nadam", "adamw"] = "nadam"
    lr: float = 0.002  # Keras Nadam's default, which the paper's code used
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7  # Keras' epsilon
    weight_decay: float = 0.0
    warmup_steps: int = 100  # linear warm-up from 0; the paper had none (Keras' Nadam has its own momentum warm-up)
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at train.max_steps
    grad_clip: float = 1.0  # max global gradient norm; 0 = off (the paper did not clip)

    def __post_init__(self) -> None:
        require(0 < self.lr < math.inf, "optim.lr", "a finite number > 0", self.lr)
        for key in ("beta1", "beta2"):
            require(0 <= getattr(self, key) < 1, f"optim.{key}", "in [0, 1)", getattr(self, key))
        require(0 < self.eps < 1, "optim.eps", "in (0, 1)", self.eps)
        require(0 <= self.weight_decay < math.inf, "optim.weight_decay", "a finite number >= 0", self.weight_decay)
        require(self.warmup_steps >= 0, "optim.warmup_steps", "at least 0", self.warmup_steps)
        require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "in [0, 1]", self.min_lr_ratio)
        require(0 <= self.grad_clip < math.inf, "optim.grad_clip", "a finite number >= 0 (0 = off)", self.grad_clip)


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    betas = (cfg.beta1, cfg.beta2)
    if cfg.name == "nadam":
        # momentum_decay=4e-3 is Keras' schedule_decay: the same Nadam the paper trained with.
        return torch.optim.NAdam(params, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 momentum_decay=4e-3)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based): linear warm-up, then constant or cosine."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(max_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, max_steps))


def apply_optim_config(optimizer: torch.optim.Optimizer, scheduler, cfg: OptimConfig,
                       max_steps: int) -> tuple[float, float]:
    """After loading a checkpoint's optimizer and schedule: make the config the truth again.

    Loading restores the param groups' lr, initial_lr, betas, eps and weight decay and the scheduler's base_lrs as they
    were saved, so a resume with another optim.lr (or betas, eps, weight_decay) would keep the old values while
    config.toml records the new. The schedule's shape (warm-up, cosine, min_lr_ratio, max_steps) is rebuilt from this
    config and `max_steps` (LambdaLR saves no function); its base and the current lr are set here, computed as
    LambdaLR does (base * factor), so an unchanged config gives bit-identical values. Returns the learning rate of the
    next step before and after."""
    before = float(optimizer.param_groups[0]["lr"])
    factor = lr_factor(scheduler.last_epoch, cfg, max_steps)
    # The schedule's shape from here on: this config and max_steps (a time budget may have sized it anew).
    scheduler.lr_lambdas = [functools.partial(lr_factor, cfg=cfg, max_steps=max_steps) for _ in optimizer.param_groups]
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr
        group["lr"] = cfg.lr * factor
        group["betas"] = (cfg.beta1, cfg.beta2)
        group["eps"] = cfg.eps
        group["weight_decay"] = cfg.weight_decay
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    return before, float(optimizer.param_groups[0]["lr"])
