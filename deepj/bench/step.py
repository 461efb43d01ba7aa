"""`python -m deepj.bench step`: training-step throughput of a config's model, per precision and dropout kind.

    python -m deepj.bench step [--config configs/demo.toml] [key=value ...] [--precision fp32,bf16]
        [--dropout deepj,torch] [--threads 1] [--steps 6] [--device cpu]

One forward + backward of the real model and loss on one micro-batch (`train.micro_batch` windows of `data.seq_len`
steps x N notes, random notes: an LSTM's cost does not depend on the values), timed `--steps` times after one warm-up
pass; the median gives windows/s for each (precision, dropout) pair. `--dropout torch` swaps the model's CPU dropout
(`deepj.model.dropout`, masks from 16-bit random integers) for `F.dropout` (`DeepJ.cpu_dropout = False` on the timed
model) to show what it saves. The model's sizes come from the config (N from the pitch range of `data.dir`'s manifest
where it exists, else 48; S = 14). One thread by default: `make demo` runs 2 ranks of one thread each on 2 cores.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext

import torch

from deepj import config
from deepj.data.manifest import Manifest, ShardError
from deepj.model import DeepJ
from deepj.training.config import TrainConfig
from deepj.training.loss import deepj_loss


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m deepj.bench step", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo.toml")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16 (fp16 on CUDA)")
    p.add_argument("--dropout", default="deepj,torch", help="comma-separated: deepj (the model's), torch (F.dropout)")
    p.add_argument("--threads", type=config.int_range(1), default=1)
    p.add_argument("--steps", type=config.int_range(1), default=6, help="timed passes per setting")
    p.add_argument("--device", type=config.device_option, default="cpu", help="cpu, cuda or cuda:N")
    return p.parse_args(argv)


def time_setting(model: DeepJ, batch: dict, precision: str, kind: str, steps: int, device: torch.device) -> float:
    """Median seconds of one forward + backward."""
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    saved = model.cpu_dropout
    model.cpu_dropout = kind != "torch"
    try:
        times = []
        for i in range(steps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            ctx = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
            with ctx:
                out = model(batch["prev"], batch["target"], batch["beat"], batch["style"])
                loss, _ = deepj_loss(out.float(), batch["target"], model.cfg.play_only)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first pass warms up allocators and kernels
                times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        model.cpu_dropout = saved


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = config.load(TrainConfig, args.config, args.overrides)
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        num_notes = Manifest.load(cfg.data.dir).num_notes
    except ShardError:
        num_notes = 48
    mcfg = dataclasses.replace(cfg.model, num_notes=num_notes, num_styles=14)
    torch.manual_seed(0)
    model = DeepJ(mcfg).to(device).train()
    b, t = cfg.train.micro_batch, cfg.data.seq_len
    g = torch.Generator().manual_seed(0)
    notes = (torch.rand(b, t + 1, num_notes, 3, generator=g) < 0.08).float()  # (B, T+1, N, 3)
    batch = {"prev": notes[:, :-1], "target": notes[:, 1:], "beat": (torch.arange(t) % 16).expand(b, t),
             "style": torch.eye(14)[torch.arange(b) % 14]}
    batch = {k: v.to(device) for k, v in batch.items()}
    results = []
    for precision in args.precision.split(","):
        for kind in args.dropout.split(","):
            s = time_setting(model, batch, precision, kind, args.steps, device)
            results.append({"precision": precision, "dropout": kind, "seconds_per_micro_batch": round(s, 4),
                            "windows_per_s": round(b / s, 2)})
            print(f"{precision:>5} dropout={kind:<6} {b / s:7.1f} windows/s ({s * 1000:.0f} ms per micro-batch of {b})",
                  flush=True)
    print(json.dumps({"benchmark": "step", "config": args.config, "overrides": args.overrides,
                      "model_params": model.num_params(), "micro_batch": b, "seq_len": t, "num_notes": num_notes,
                      "threads": args.threads, "device": str(device), "torch": torch.__version__,
                      "cpu": platform.processor() or platform.machine(), "results": results}))
    return 0
