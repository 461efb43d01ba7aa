"""What a run reports: loss terms averaged over batches and ranks (`LossMeter`), throughput (`Progress`), TensorBoard
scalars and samples (rank 0), a console line per log step, and the FLOP count.

TensorBoard lives in `<run.dir>/tb`, one folder for the whole run. On resume the writer is opened with
`purge_step=<resumed step> + 1`, so events that a killed run logged after its last checkpoint are discarded by
TensorBoard's readers and every step appears once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from deepj.model import ModelConfig
from deepj.training import dist
from deepj.training.dist import DistInfo

if TYPE_CHECKING:
    from deepj.training.config import TrainConfig
    from deepj.training.engine import Engine


def flops_per_window(cfg: ModelConfig, seq_len: int) -> float:
    """Analytic FLOPs of one training window (forward + backward = 3 x forward), counting multiply-adds as 2.

    Per (step, note) cell, forward:
      conv over notes:   2 * kernel * 3 * filters
      each LSTM layer:   2 * 4 * hidden * (input + hidden)   (time layers run for every note, note layers every step)
      heads:             2 * note_hidden * 3
    Element-wise gate math, style projections (once per window) and the embedding are left out (< 1%).
    """
    feat = 1 + 12 + 16 + 1 + cfg.conv_filters  # pitch position, pitch class, beat, same-class count, conv
    cell = 2 * cfg.conv_kernel * 3 * cfg.conv_filters
    width = feat
    for _ in range(cfg.time_layers):
        cell += 2 * 4 * cfg.time_hidden * (width + cfg.time_hidden)
        width = cfg.time_hidden
    width = cfg.time_hidden + 3
    for _ in range(cfg.note_layers):
        cell += 2 * 4 * cfg.note_hidden * (width + cfg.note_hidden)
        width = cfg.note_hidden
    cell += 2 * cfg.note_hidden * 3
    return 3.0 * cell * seq_len * cfg.num_notes


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def progress_line(step: int, max_steps: int, scalars: dict[str, float], eta_s: float, width: int = 20) -> str:
    done = int(width * step / max(max_steps, 1))
    bar = "#" * done + "." * (width - done)
    loss = scalars.get("train/loss", float("nan"))
    parts = [
        f"step {step:>{len(str(max_steps))}}/{max_steps} [{bar}] {100 * step / max(max_steps, 1):3.0f}%",
        f"loss {loss:.4f} (play {scalars.get('train/play', 0):.3f} replay {scalars.get('train/replay', 0):.3f} "
        f"vol {scalars.get('train/volume', 0):.4f})",
        f"lr {scalars.get('train/lr', 0):.2e}",
        f"gnorm {scalars.get('train/grad_norm', 0):.2f}",
        f"{scalars.get('perf/windows_per_s', 0):.0f} win/s",
        f"data wait {100 * scalars.get('perf/data_wait_frac', 0):.1f}%",
        f"ETA {format_eta(eta_s)}",
    ]
    return " | ".join(parts)


class RunLogger:
    """Rank 0's TensorBoard writer and console; on other ranks every method is a no-op."""

    def __init__(self, run_dir: str | Path, *, enabled: bool, start_step: int, max_steps: int):
        self.enabled, self.max_steps = enabled, max_steps
        self.writer = None
        self._t0, self._s0 = time.perf_counter(), start_step
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            # Steps up to the checkpoint were logged before it was written; anything later belongs to the killed run.
            purge_step = start_step + 1 if start_step > 0 else None
            self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float], console: bool = False) -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        if console:
            rate = (step - self._s0) / max(time.perf_counter() - self._t0, 1e-9)
            eta = (self.max_steps - step) / rate if rate > 0 else 0.0
            print(progress_line(step, self.max_steps, values, eta), flush=True)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled:
            self.writer.add_text(tag, text, step)

    def image(self, tag: str, hwc_uint8, step: int) -> None:
        if self.enabled:
            self.writer.add_image(tag, hwc_uint8, step, dataformats="HWC")

    def audio(self, tag: str, samples, step: int, sample_rate: int) -> None:
        if self.enabled:
            self.writer.add_audio(tag, samples, step, sample_rate=sample_rate)

    def flush(self) -> None:
        if self.enabled:
            self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()


def warn0(message: str) -> None:
    from deepj.training.dist import info

    if info().is_main:
        print(f"warning: {message}", file=sys.stderr, flush=True)


class LossMeter:
    """Loss terms summed over micro-batches (or validation batches), averaged over them and over ranks on read.

    The terms are what the loss returns (play, replay, volume; play alone for a play-only model), the same on every
    rank, so the all-reduce lines up."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None  # (1 + terms,) float64 on the CPU
        self.n = 0

    def add(self, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Adds one batch's terms; returns them as {"loss": ..., term: ...} floats."""
        values = torch.tensor([float(total.detach()), *(float(v) for v in terms.values())], dtype=torch.float64)
        if self.sums is None:
            self.names, self.sums = ["loss", *terms], torch.zeros_like(values)
        self.sums += values
        self.n += 1
        return dict(zip(self.names, values.tolist()))

    def mean(self, prefix: str) -> dict[str, float]:
        """Collective. {prefix/loss, prefix/<term>...} averaged over batches and ranks; resets the meter."""
        mean = dist.all_reduce_mean(self.sums / self.n)
        self.sums, self.n = None, 0
        return {f"{prefix}/{k}": float(v) for k, v in zip(self.names, mean)}


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
