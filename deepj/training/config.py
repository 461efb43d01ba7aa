"""The training config: one small dataclass per component, nested in `TrainConfig`.

Each builder receives only its own section. Defaults here, then `configs/NAME.toml`, then `key.sub=value` overrides
(`deepj.config.load`, strict). The resolved config is printed, written to `<run.dir>/config.toml`, and stored in every
checkpoint, so `generate` and `evaluate` need only a checkpoint path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from deepj.config import finite, require
from deepj.data.loader import DataConfig
from deepj.model import ModelConfig
from deepj.training.checkpoint import CheckpointConfig
from deepj.training.optim import OptimConfig


@dataclass
class RunConfig:
    dir: str = "runs/debug"  # run folder: checkpoints, TensorBoard, config, samples
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch CPU threads per rank; 0 = cores / ranks on this node

    def __post_init__(self) -> None:
        require(self.threads >= 0, "run.threads", "at least 0 (0 = cores / ranks)", self.threads)


@dataclass
class TrainLoopConfig:
    max_steps: int = 1000  # optimizer steps
    global_batch: int = 16  # windows per optimizer step over all ranks (the paper: 16)
    micro_batch: int = 16  # windows per forward/backward on one rank; accumulation = global / (micro x world)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"  # auto: bf16 where the device has it natively
    backend: Literal["ddp", "deepspeed"] = "ddp"
    # ZeRO stage and the like; batch, accumulation, precision and clipping come from this config, not that file
    deepspeed_config: str = "launcher/ds_zero1.json"
    val_every: int = 200  # optimizer steps between validation passes; 0 = only at the end
    val_batches: int = 8  # validation micro-batches per rank per pass (the same on every rank)
    deterministic: bool = True  # torch.use_deterministic_algorithms: bit-exact resume on CPU
    # > 0: end training within about this many minutes. The speed of this machine, measured over the first steps,
    # sizes max_steps (never above the value given), which the console says and config.toml records; a resumed run
    # keeps the size its start chose. 0 = off: max_steps as given.
    time_budget_min: float = 0.0

    def __post_init__(self) -> None:
        for key in ("max_steps", "global_batch", "micro_batch"):
            require(getattr(self, key) >= 1, f"train.{key}", "at least 1", getattr(self, key))
        for key in ("val_every", "val_batches"):
            require(getattr(self, key) >= 0, f"train.{key}", "at least 0", getattr(self, key))
        require(finite(self.time_budget_min) and self.time_budget_min >= 0, "train.time_budget_min",
                "a finite number of minutes >= 0 (0 = off)", self.time_budget_min)


@dataclass
class LogConfig:
    every: int = 10  # optimizer steps between console lines and TensorBoard scalars
    sample_every: int = 500  # optimizer steps between generated samples in TensorBoard; 0 = off
    sample_bars: int = 4  # length of those samples

    def __post_init__(self) -> None:
        require(self.every >= 1, "log.every", "at least 1", self.every)
        require(self.sample_every >= 0, "log.sample_every", "at least 0 (0 = off)", self.sample_every)
        require(self.sample_bars >= 1, "log.sample_bars", "at least 1", self.sample_bars)


@dataclass
class TrainConfig:
    seed: int = 0
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
