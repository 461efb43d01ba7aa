"""`python -m deepj.bench train --device cuda`: the paper's DeepJ training step on a GPU, per batch size.

    python -m deepj.bench train [--device cuda] [--config configs/paper.toml] [--batches 16,32,...,1024]
        [--precisions bf16,fp16,fp32] [--graph] [--steps 20] [--profile-batch B] [--out DIR] [key=value ...]

One run builds, checks and times every setting:
- the matmul peak of this GPU, measured here (8192^3 products, median of CUDA-event timings) for fp16, bf16, tf32
  and fp32: the denominator of MFU;
- what the LSTMs really compute in under each precision (`deepj.training.engine.lstm_compute_dtypes`: under bf16
  autocast ATen hands cuDNN RNNs float16), and the MFU is taken against that dtype's peak (tf32 for fp32 when cuDNN may
  use TF32, PyTorch's default);
- per (precision, batch): one optimizer step exactly as training runs it (DDPEngine: autocast forward, loss,
  backward, clipping, Nadam, scheduler; GradScaler for fp16) on batches already on the GPU, timed with CUDA events
  (median of --steps after --warmup); windows/s, note-steps/s (windows x 128 steps x 48 notes), achieved FLOP/s from
  `deepj.training.logger.flops_per_window` (the analytic count documented there: matmuls and the convolution, forward +
  backward = 3 x forward), MFU, peak memory. A setting that runs out of memory is reported and ends that precision's
  sweep. `--graph` adds the same step captured whole in one CUDA graph (bf16/fp32; fp16's GradScaler is not
  capturable), which removes the CPU's launch overhead;
- the loss of the first step per setting is checked finite; `torch.profiler`'s kernel table at `--profile-batch`
  (default: the best batch) goes to the output folder;
- the multi-GPU estimate (`scaling_estimate`) from the best measured step and the gradient's size.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from deepj import config
from deepj.bench._machine import gpu_driver, machine
from deepj.model import DeepJ
from deepj.training.config import TrainConfig
from deepj.training.engine import DDPEngine, autocast_dtype, lstm_compute_dtypes
from deepj.training.logger import flops_per_window
from deepj.training.loss import deepj_loss
from deepj.training.optim import build_optimizer, build_scheduler

NUM_STYLES = 23  # the paper's style count (its dataset's composers); only the size of one small Linear depends on it
MATMUL_N = 8192


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m deepj.bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/paper.toml", help="model sizes and optimizer from this config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (model.*, optim.*, data.seq_len)")
    p.add_argument("--device", type=config.device_option, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", default="16,32,64,128,256,512,1024", help="comma-separated windows per step")
    p.add_argument("--precisions", default="bf16,fp16,fp32", help="comma-separated: bf16, fp16 (CUDA), fp32")
    p.add_argument("--graph", action="store_true", help="also time the step captured in one CUDA graph")
    p.add_argument("--steps", type=int, default=20, help="timed steps per setting (median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN plans, allocator)")
    p.add_argument("--profile-batch", type=int, default=0, help="profile this batch (0: the best; -1: none)")
    p.add_argument("--layer-study", type=int, default=0, metavar="B",
                   help="also time one LSTM layer of each axis at batch B in layouts and bias variants")
    p.add_argument("--out", type=Path, default=None, help="folder for profile.txt and train.json")
    args = p.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        p.error(f"--batches: comma-separated integers >= 1, got {args.batches!r}")
    return args


# --------------------------------------------------------------------------------------------------- peaks

def time_calls(fn, steps: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds of each of `steps` calls of fn after `warmup` calls: CUDA events around each call on a GPU, the wall
    clock elsewhere."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def matmul_peaks(device: torch.device, n: int = MATMUL_N) -> dict[str, float]:
    """TFLOP/s of an n x n x n product per dtype, on random data (zeros run faster), median of 10."""
    peaks = {}
    g = torch.Generator(device).manual_seed(0)
    for name, dtype, tf32 in (("fp16", torch.float16, False), ("bf16", torch.bfloat16, False),
                              ("tf32", torch.float32, True), ("fp32", torch.float32, False)):
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
            b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
            t = statistics.median(time_calls(lambda a=a, b=b: a @ b, 10, 3, device))
            peaks[name] = 2 * n**3 / t / 1e12
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
        del a, b
    torch.cuda.empty_cache()
    return peaks


def lstm_peak_name(precision: str, lstm_dtypes: set[torch.dtype]) -> str:
    """Which matmul peak the LSTMs' arithmetic runs against: the dtype cuDNN actually gets."""
    if lstm_dtypes == {torch.float16}:
        return "fp16"
    if lstm_dtypes == {torch.bfloat16}:
        return "bf16"
    # fp32 LSTMs: cuDNN uses TF32 tensor cores when torch.backends.cudnn.allow_tf32 (the default).
    return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


# --------------------------------------------------------------------------------------------------- the step

def make_batches(b: int, t: int, n: int, s: int, device: torch.device, count: int = 3) -> list[dict]:
    """`count` different random batches (8% of notes on, like real music), rotated so no step reuses the last one's."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        notes = (torch.rand(b, t + 1, n, 3, generator=g) < 0.08).float()  # (B, T+1, N, 3)
        out.append({k: v.to(device) for k, v in {
            "prev": notes[:, :-1], "target": notes[:, 1:],  # (B, T, N, 3)
            "beat": (torch.arange(t) % 16).expand(b, t).contiguous(),  # (B, T)
            "style": torch.eye(s)[torch.randint(s, (b,), generator=g)],  # (B, S)
        }.items()})
    return out


class Step:
    """One optimizer step as deepj.train runs it (one process): `DDPEngine` forward/backward/step, eager."""

    def __init__(self, cfg: TrainConfig, precision: str, device: torch.device):
        torch.manual_seed(0)
        self.model = DeepJ(cfg.model).to(device).train()
        opt = build_optimizer(self.model.parameters(), cfg.optim)
        sched = build_scheduler(opt, cfg.optim, 10**9)
        self.engine = DDPEngine(self.model, opt, sched, device=device, distributed=False, accumulation=1,
                                precision=precision, grad_clip=cfg.optim.grad_clip)
        self.first_loss: torch.Tensor | None = None

    def __call__(self, batch: dict) -> None:
        out = self.engine(batch["prev"], batch["target"], batch["beat"], batch["style"])  # (B, T, N, 3)
        loss, _ = deepj_loss(out.float(), batch["target"], self.model.cfg.play_only)
        self.engine.backward(loss)
        self.engine.step()
        if self.first_loss is None:
            self.first_loss = loss.detach()


class GraphStep:
    """The same step captured whole in one CUDA graph (static batch buffers; capturable Nadam; no GradScaler).

    Capture needs autocast's weight cache off and a capturable optimizer (its step count on the device). The
    learning rate is the one at capture time: a benchmark, not a trainer.
    """

    def __init__(self, cfg: TrainConfig, precision: str, device: torch.device, example: dict):
        torch.manual_seed(0)
        self.model = model = DeepJ(cfg.model).to(device).train()
        o = cfg.optim
        self.opt = torch.optim.NAdam(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                     momentum_decay=4e-3, capturable=True)
        self.static = {k: v.clone() for k, v in example.items()}
        dtype = autocast_dtype(precision)
        self.clip = o.grad_clip or float("inf")
        self.first_loss: torch.Tensor | None = None

        def body() -> torch.Tensor:
            x = self.static
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None, cache_enabled=False):
                out = model(x["prev"], x["target"], x["beat"], x["style"])
            loss, _ = deepj_loss(out.float(), x["target"], model.cfg.play_only)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip)
            self.opt.step()
            return loss.detach()

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
            for _ in range(3):
                self.opt.zero_grad(set_to_none=True)
                body()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = body()

    def __call__(self, batch: dict) -> None:
        for k, v in batch.items():
            self.static[k].copy_(v)
        # Gradients are overwritten, not accumulated, by replay: backward in the graph wrote them from zero (set to
        # None before capture makes the captured backward allocate and fill them).
        self.graph.replay()
        if self.first_loss is None:
            self.first_loss = self.static_loss.clone()


def measure(step, batches: list[dict], steps: int, warmup: int, device: torch.device) -> dict:
    calls = itertools.count()
    times = time_calls(lambda: step(batches[next(calls) % len(batches)]), steps, warmup, device)
    first = float(step.first_loss)
    if not math.isfinite(first):
        raise RuntimeError(f"non-finite loss {first} in the first step")
    return {"step_s": statistics.median(times), "step_s_min": min(times), "step_s_max": max(times),
            "first_loss": round(first, 5)}


def profile_table(step, batches: list[dict], path: Path | None) -> str:
    from torch.profiler import ProfilerActivity, profile

    for b in batches[:2]:
        step(b)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for b in batches * 2:
            step(b)
        torch.cuda.synchronize()
    sort = "cuda_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=70)
    if path is not None:
        path.write_text(table)
    return table


# --------------------------------------------------------------------------------------------------- layer study

def layer_study(cfg: TrainConfig, batch: int, device: torch.device, steps: int = 10) -> list[dict]:
    """Forward + backward of the first LSTM layer of each axis alone, fp16 autocast, at the model's shapes.

    Variants: "model" = batch-first input as the model feeds it (nn.LSTM transposes to time-major inside);
    "time-major" = the same input already time-major and contiguous; "no-bias" = bias=False (what the layer costs
    without cuDNN's bias gradient); "ones-column" = bias=False with a constant-1 input column, so the bias is a
    column of W_ih and its gradient comes out of the weight-gradient GEMM.
    """
    m, t, n = cfg.model, cfg.data.seq_len, cfg.model.num_notes
    shapes = {"time": (batch * n, t, m.num_features, m.time_hidden), "note": (batch * t, n, m.time_hidden + 3,
                                                                              m.note_hidden)}
    rows = []
    for axis, (rows_, length, width, hidden) in shapes.items():
        for variant in ("model", "time-major", "no-bias", "ones-column"):
            torch.cuda.empty_cache()
            extra = 1 if variant == "ones-column" else 0
            lstm = nn.LSTM(width + extra, hidden, batch_first=variant != "time-major",
                           bias=variant in ("model", "time-major")).to(device)
            shape = (length, rows_, width + extra) if variant == "time-major" else (rows_, length, width + extra)
            x = torch.randn(shape, device=device, requires_grad=True)

            def run(lstm=lstm, x=x):
                with torch.autocast("cuda", dtype=torch.float16):
                    y, _ = lstm(x)
                y.float().sum().backward()

            try:
                ms = statistics.median(time_calls(run, steps, 3, device)) * 1e3
                flops = 3 * 2 * 4 * hidden * (width + hidden) * rows_ * length
                rows.append({"axis": axis, "variant": variant, "rows": rows_, "length": length, "ms": round(ms, 3),
                             "tflops": round(flops / ms / 1e9, 1)})
            except torch.OutOfMemoryError:
                rows.append({"axis": axis, "variant": variant, "error": "out of memory"})
            print(f"layer study {axis:>4} {variant:>11}: " + (f"{rows[-1]['ms']:8.2f} ms, {rows[-1]['tflops']:6.1f} "
                  "TFLOP/s" if "ms" in rows[-1] else rows[-1]["error"]), flush=True)
            del lstm, x
    return rows


# --------------------------------------------------------------------------------------------------- scaling

# Assumed link figures for the estimate (not measured here: one GPU). Bus bandwidth = what NCCL's ring all-reduce
# sustains per GPU; about 80% of the link's one-direction rate.
LINKS = {
    "nvlink4": {"bus_gb_s": 360.0, "latency_us": 10.0,
                "what": "NVLink 4 (H100 SXM, 450 GB/s per direction; 80% = 360 GB/s)"},
    "ib_ndr": {"bus_gb_s": 40.0, "latency_us": 20.0,
               "what": "InfiniBand NDR, one 400 Gb/s NIC per GPU (50 GB/s; 80% = 40 GB/s)"},
}


def allreduce_s(nbytes: float, ranks: int, bus_gb_s: float, latency_us: float) -> float:
    """Ring all-reduce: each rank sends and receives 2 (n-1)/n of the buffer, in 2 (n-1) latency-bound steps."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / (bus_gb_s * 1e9) + 2 * (ranks - 1) * latency_us * 1e-6


def scaling_estimate(step_s: float, batch: int, grad_bytes: int, bucket_bytes: int = 25 * 2**20) -> list[dict]:
    """Expected step time and efficiency at 1, 8 GPUs (one node, NVLink) and 4 x 8 GPUs (InfiniBand between nodes).

    Weak scaling: every GPU keeps the measured per-GPU batch, so the global batch grows with the GPU count. DDP
    overlaps a bucket's all-reduce with the rest of backward; the whole gradient here is smaller than one 25 MB
    bucket, so the all-reduce starts only when backward ends and nothing overlaps: step = compute + all-reduce.
    Multi-node: hierarchical (reduce-scatter in the node over NVLink, all-reduce of each GPU's 1/8 across nodes over
    InfiniBand, all-gather in the node) — what NCCL's tree/ring algorithms approach.
    """
    nvl, ib = LINKS["nvlink4"], LINKS["ib_ndr"]
    rows = []
    for nodes, gpus in ((1, 1), (1, 8), (4, 8)):
        n = nodes * gpus
        if n == 1:
            comm = 0.0
        elif nodes == 1:
            comm = allreduce_s(grad_bytes, gpus, nvl["bus_gb_s"], nvl["latency_us"])
        else:
            # reduce-scatter + all-gather in the node = one ring all-reduce's traffic there; between nodes 1/gpus each
            comm = (allreduce_s(grad_bytes, gpus, nvl["bus_gb_s"], nvl["latency_us"])
                    + allreduce_s(grad_bytes / gpus, nodes, ib["bus_gb_s"], ib["latency_us"]))
        overlap = 0.0 if grad_bytes <= bucket_bytes else None  # None: would need the per-bucket timeline
        step = step_s + comm - (overlap or 0.0)
        rows.append({"nodes": nodes, "gpus_per_node": gpus, "gpus": n, "global_batch": batch * n,
                     "allreduce_ms": round(comm * 1e3, 4), "step_ms": round(step * 1e3, 3),
                     "windows_per_s": round(batch * n / step, 1), "efficiency": round(step_s / step, 4),
                     "speedup": round(n * step_s / step, 2)})
    return rows


# --------------------------------------------------------------------------------------------------- main

def device_info(device: torch.device) -> dict:
    info = machine(device)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                    driver=gpu_driver())
    return info


def table(rows: list[dict]) -> str:
    head = (f"{'precision':>9} {'variant':>7} {'batch':>5} {'step ms':>9} {'windows/s':>10} {'note-steps/s':>13} "
            f"{'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>8}")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['precision']:>9} {r['variant']:>7} {r['batch']:>5}  {r['error']}")
            continue
        lines.append(f"{r['precision']:>9} {r['variant']:>7} {r['batch']:>5} {r['step_s'] * 1e3:9.2f} "
                     f"{r['windows_per_s']:10.1f} {r['note_steps_per_s']:13.3g} {r['tflops']:8.1f} "
                     f"{100 * r['mfu']:5.1f}% {r['peak_gib']:8.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = config.load(TrainConfig, args.config, args.overrides)
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cfg.model = dataclasses.replace(cfg.model, num_notes=48, num_styles=NUM_STYLES)
    t, n = cfg.data.seq_len, cfg.model.num_notes
    flops_window = flops_per_window(cfg.model, t)
    info = device_info(device)
    peaks = matmul_peaks(device) if cuda else {}
    if peaks:
        print("matmul peak (TFLOP/s, 8192^3, median of 10): "
              + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)

    rows: list[dict] = []
    lstm_dtypes: dict[str, list[str]] = {}
    variants = ["eager"] + (["graph"] if args.graph and cuda else [])
    for precision in args.precisions.split(","):
        if precision == "fp16" and not cuda:
            continue
        probe = DeepJ(cfg.model).to(device)
        dtypes = lstm_compute_dtypes(probe, device, precision)
        del probe
        lstm_dtypes[precision] = sorted(str(d).removeprefix("torch.") for d in dtypes)
        peak_name = lstm_peak_name(precision, dtypes)
        print(f"{precision}: LSTMs compute in {', '.join(lstm_dtypes[precision])}; MFU against the {peak_name} peak",
              flush=True)
        for variant in variants:
            if variant == "graph" and precision == "fp16":
                continue
            for b in (int(x) for x in args.batches.split(",")):
                row = {"precision": precision, "variant": variant, "batch": b}
                try:
                    if cuda:
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                    batches = make_batches(b, t, n, cfg.model.num_styles, device)
                    step = (GraphStep(cfg, precision, device, batches[0]) if variant == "graph"
                            else Step(cfg, precision, device))
                    row.update(measure(step, batches, args.steps, args.warmup, device))
                    s = row["step_s"]
                    row.update({"windows_per_s": b / s, "note_steps_per_s": b * t * n / s,
                                "tflops": flops_window * b / s / 1e12,
                                "mfu": flops_window * b / s / 1e12 / peaks[peak_name] if peaks else 0.0,
                                "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0})
                except torch.OutOfMemoryError:
                    row["error"] = "out of memory"
                except RuntimeError as e:  # capture failures and the like: report, keep measuring the rest
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                step = batches = None
                rows.append(row)
                print(table([row]).splitlines()[1], flush=True)
                if row.get("error") == "out of memory":
                    break

    ok = [r for r in rows if "error" not in r]
    best = max(ok, key=lambda r: r["windows_per_s"]) if ok else None
    profile = None
    if cuda and best and args.profile_batch >= 0:
        pb = args.profile_batch or best["batch"]
        torch.cuda.empty_cache()
        step = Step(cfg, best["precision"], device)
        profile = {"precision": best["precision"], "batch": pb,
                   "table": profile_table(step, make_batches(pb, t, n, cfg.model.num_styles, device, 2),
                                          args.out / "profile.txt" if args.out else None)}
        step = None
    study = layer_study(cfg, args.layer_study, device) if cuda and args.layer_study else []
    params = DeepJ(cfg.model).num_params()
    scaling = scaling_estimate(best["step_s"], best["batch"], params * 4) if best else []

    print()
    print(table(rows))
    if best:
        print(f"best: {best['precision']} {best['variant']} batch {best['batch']}: {best['windows_per_s']:.0f} "
              f"windows/s, {best['tflops']:.1f} TFLOP/s, MFU {100 * best['mfu']:.1f}%")
    if profile:
        print(f"\nprofile ({profile['precision']}, batch {profile['batch']}, 4 steps):\n{profile['table']}")
    if scaling:
        print(f"\nmulti-GPU estimate (gradient {params * 4 / 1e6:.2f} MB fp32, per-GPU batch {best['batch']}):")
        for r in scaling:
            print(f"  {r['nodes']} node(s) x {r['gpus_per_node']} GPU(s): all-reduce {r['allreduce_ms']:.3f} ms, "
                  f"step {r['step_ms']:.2f} ms, {r['windows_per_s']:.0f} windows/s, efficiency {r['efficiency']:.4f}")
    result = {"benchmark": "train", "config": args.config, "overrides": args.overrides, **info,
              "model": dataclasses.asdict(cfg.model), "params": params, "seq_len": t,
              "flops_per_window": flops_window, "matmul_peak_tflops": peaks, "lstm_compute_dtypes": lstm_dtypes,
              "rows": rows, "best": best, "layer_study": study, "links_assumed": LINKS, "scaling": scaling,
              "profile": {k: v for k, v in (profile or {}).items() if k != "table"}}
    if args.out:
        (args.out / "train.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0
