"""On a GPU (`pytest -m gpu`; skipped without CUDA): fp16/bf16 training steps and the dtypes they really use, a
killed-and-resumed run of the real training entry against an uninterrupted one (docs/design.md, distributed pitfalls
5, 9 and 15), batched generation.

`DEEPJ_TEST_DEVICE=cpu` runs the same tests on the CPU (the fp16 cases skip: fp16 autocast needs CUDA), to check the
tests' own logic on a machine without a GPU. Unset (or `cuda`), every test here skips when torch sees no CUDA device.
Run with `-rP` to see what each test prints (the LSTM dtypes bf16 gets, whether resume was bit-exact).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from torch import nn

from deepj import config
from deepj.data.loader import DataConfig, StreamingLoader
from deepj.model import DeepJ, ModelConfig
from deepj.sampling import SampleConfig, generate
from deepj.training import checkpoint
from deepj.training.config import TrainConfig
from deepj.training.engine import DDPEngine, autocast_dtype, lstm_compute_dtypes
from deepj.training.loss import deepj_loss
from deepj.training.optim import OptimConfig, build_optimizer, build_scheduler

DEVICE = os.environ.get("DEEPJ_TEST_DEVICE", "cuda")
if DEVICE not in ("cuda", "cpu"):
    raise ValueError(f"DEEPJ_TEST_DEVICE must be 'cuda' (the default) or 'cpu', got {DEVICE!r}")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")]

PRECISIONS = ["bf16", pytest.param("fp16", marks=pytest.mark.skipif(DEVICE != "cuda", reason="fp16 needs CUDA"))]


def tree_equal(a, b, path: str = "") -> None:
    """Nested dicts / lists / tuples of tensors and scalars: the same structure and exactly the same values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a!r} vs {b!r}"
        diff = (a.cpu().double() - b.cpu().double()).abs().max()
        assert torch.equal(a.cpu(), b.cpu()), f"{path} differs (max {diff})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            tree_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            tree_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].cpu().double() - b[k].cpu().double()).abs().max()) for k in a)


# ---------------------------------------------------------------------------------------------------------- training
def real_batch(shards: Path) -> dict[str, torch.Tensor]:
    """One micro-batch of 4 windows of 32 steps from the tiny real corpus, on DEVICE."""
    loader = StreamingLoader(DataConfig(dir=str(shards), seq_len=32, stride=16, workers=0), "train", micro_batch=4,
                             global_batch=4, seed=0)
    batch = next(iter(loader))
    return {k: batch[k].to(DEVICE) for k in ("prev", "target", "beat", "style")}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_mixed_precision_training_steps(tiny_shards, precision):
    """fp16 / bf16 optimizer steps through DDPEngine (one process) on a real batch.

    Asserts: the LSTMs compute in what `lstm_compute_dtypes` reports, also during training forwards, and that is
    {float16} under fp16; under bf16 on CUDA it is a non-empty subset of {float16, bfloat16} (ATen's cuDNN-RNN autocast
    has cast to float16; the test prints what this torch/cuDNN does), {bfloat16} on CPU. The model's output is in the
    autocast dtype; parameters and their gradients stay float32; every loss is finite and the last one is below the
    first (16 steps on one batch, no dropout); fp16 has an enabled GradScaler with a finite positive scale and at least
    one step it did not skip (overflowing steps are skipped while the scale halves from 2**16); bf16 has no scaling and
    skips nothing.
    """
    dev, low = torch.device(DEVICE), autocast_dtype(precision)
    batch = real_batch(tiny_shards)
    n = batch["prev"].shape[2]  # prev: (B, T, N, 3)
    torch.manual_seed(0)
    model = DeepJ(ModelConfig(num_notes=n, num_styles=batch["style"].shape[1], style_dim=16, conv_filters=8,
                              time_hidden=32, note_hidden=16, dropout=0.0, input_dropout=0.0)).to(dev)
    ocfg = OptimConfig(lr=0.01, warmup_steps=0)
    steps = 16
    opt = build_optimizer(model.parameters(), ocfg)
    engine = DDPEngine(model, opt, build_scheduler(opt, ocfg, steps), device=dev, distributed=False, accumulation=1,
                       precision=precision, grad_clip=ocfg.grad_clip)

    probed = lstm_compute_dtypes(model, dev, precision)
    print(f"{precision} on {DEVICE}: LSTMs compute in {sorted(str(d) for d in probed)}")
    if precision == "fp16":
        assert probed == {torch.float16}
    elif DEVICE == "cuda":
        assert probed and probed <= {torch.float16, torch.bfloat16}, probed
    else:
        assert probed == {torch.bfloat16}

    seen: set[torch.dtype] = set()  # what the LSTMs return in the training forwards
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out[0].dtype))
             for m in model.modules() if isinstance(m, nn.LSTM)]
    engine.train()
    losses, scales = [], []
    for _ in range(steps):
        out = engine(batch["prev"], batch["target"], batch["beat"], batch["style"])  # (B, T, N, 3)
        assert out.dtype == low
        loss, _ = deepj_loss(out.float(), batch["target"])
        engine.backward(loss)
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.dtype == torch.float32, name
        engine.step()
        losses.append(loss.item())
        scales.append(engine.scaler.get_scale() if engine.scaler.is_enabled() else None)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        final, _ = deepj_loss(engine(batch["prev"], batch["target"], batch["beat"], batch["style"]).float(),
                              batch["target"])
    applied = int(opt.state.get(next(model.parameters()), {}).get("step", 0))  # NAdam counts the steps it took
    print(f"{precision}: losses {[round(x, 4) for x in losses]} -> {float(final):.4f}; {applied}/{steps} steps applied;"
          f" scales {scales}")

    assert seen == probed
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(math.isfinite(x) for x in losses) and math.isfinite(float(final))
    assert float(final) < losses[0]
    if precision == "fp16":
        scale = engine.scaler.get_scale()
        assert engine.scaler.is_enabled() and math.isfinite(scale) and scale > 0
        assert 1 <= applied <= steps
    else:
        assert not engine.scaler.is_enabled() and applied == steps


# ------------------------------------------------------------------------------------------------ checkpoint, resume
def train(shards: Path, run: Path, precision: str, env: dict | None = None):
    """The real training entry, one process on DEVICE: 6 steps of the debug config, checkpoints at 3 and 6."""
    return run_cli("-m", "deepj.train", "--config", "configs/debug.toml", f"data.dir={shards}", f"run.dir={run}",
                   f"run.device={DEVICE}", "run.threads=1", f"train.precision={precision}", "train.max_steps=6",
                   "checkpoint.every=3", "checkpoint.keep=10", "train.val_every=0", "log.sample_every=0",
                   env_extra=env)


def load_ckpt(run: Path, step: int) -> tuple[dict, dict]:
    ckpt = checkpoint.step_dir(run, step)
    meta = json.loads((ckpt / checkpoint.META).read_text())
    return {**checkpoint.load_shared(ckpt), "meta": meta}, checkpoint.load_rank(ckpt, 0)


def assert_same_run_state(a: tuple[dict, dict], b: tuple[dict, dict], exact_floats: bool) -> None:
    """Two checkpoints of one step: counters, loader position, LR schedule, GradScaler, optimizer step counts and the
    torch, CUDA and numpy RNG states equal exactly; model weights and optimizer moments exactly too, or (when the GPU's
    kernels are not run-to-run deterministic) within a tolerance far below one optimizer step's change."""
    (sa, ra), (sb, rb) = a, b
    tree_equal(sa["loader"], sb["loader"], "loader")
    for key in ("step", "manifest_hash", "model", "styles"):
        tree_equal(sa["meta"][key], sb["meta"][key], key)
    tree_equal({k: v for k, v in sa["meta"]["config"].items() if k != "run"},  # run.dir differs
               {k: v for k, v in sb["meta"]["config"].items() if k != "run"}, "config")
    ea, eb = sa["engine"], sb["engine"]
    for key in ("scheduler", "scaler"):
        tree_equal(ea[key], eb[key], key)
    tree_equal(ea["optimizer"]["param_groups"], eb["optimizer"]["param_groups"], "optimizer.param_groups")
    # torch, CUDA and numpy RNGs. Not Python's `random`: train.py does not seed it, so two fresh runs start from
    # different states (its restore is checked by assert_restores_exactly).
    tree_equal({k: v for k, v in ra["rng"].items() if k != "random"},
               {k: v for k, v in rb["rng"].items() if k != "random"}, "rng")
    if exact_floats:
        tree_equal(ea["model"], eb["model"], "model")
        tree_equal(ea["optimizer"]["state"], eb["optimizer"]["state"], "optimizer.state")
        return
    torch.testing.assert_close(ea["model"], eb["model"], rtol=1e-3, atol=1e-4)
    for pid, st in ea["optimizer"]["state"].items():
        tree_equal(st["step"], eb["optimizer"]["state"][pid]["step"], f"optimizer.state.{pid}.step")
        torch.testing.assert_close(st, eb["optimizer"]["state"][pid], rtol=1e-3, atol=1e-4)


def assert_restores_exactly(run: Path, step: int) -> None:
    """Train.py's resume path, in this process on DEVICE: after loading, the engine (model, optimizer, LR schedule,
    GradScaler), the RNGs (torch, CUDA, numpy, random) and the loader hold exactly what the checkpoint saved."""
    dev = torch.device(DEVICE)
    ckpt = checkpoint.step_dir(run, step)
    cfg = config.load(TrainConfig, run / "config.toml")  # resolved: num_notes, num_styles and precision filled in
    model = DeepJ(cfg.model).to(dev)
    opt = build_optimizer(model.parameters(), cfg.optim)
    engine = DDPEngine(model, opt, build_scheduler(opt, cfg.optim, cfg.train.max_steps), device=dev,
                       distributed=False, accumulation=cfg.train.global_batch // cfg.train.micro_batch,
                       precision=cfg.train.precision, grad_clip=cfg.optim.grad_clip)
    shared, mine = checkpoint.load_shared(ckpt, map_location=dev), checkpoint.load_rank(ckpt, 0)
    engine.load_state_dict(shared["engine"])
    tree_equal(engine.state_dict(), shared["engine"], "engine")
    assert next(iter(opt.state.values()))["exp_avg"].device.type == DEVICE  # moments live with the parameters

    loader = StreamingLoader(cfg.data, "train", micro_batch=cfg.train.micro_batch, global_batch=cfg.train.global_batch,
                             seed=cfg.seed)
    fresh = loader.state_dict()
    loader.load_state_dict(shared["loader"])
    assert loader.state_dict() == shared["loader"] != fresh

    if DEVICE == "cuda":
        assert len(mine["rng"]["cuda"]) == torch.cuda.device_count()  # CUDA generators are saved
    ours = checkpoint.rng_state()
    try:
        checkpoint.set_rng_state(mine["rng"])
        tree_equal(checkpoint.rng_state(), mine["rng"], "rng")
    finally:
        checkpoint.set_rng_state(ours)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_killed_and_resumed_run_matches_uninterrupted(tiny_shards, tmp_path, precision):
    """Checkpoint and resume with the real entry on DEVICE (docs/design.md, distributed pitfalls 5, 9, 15).

    A: 6 uninterrupted steps, checkpoints at 3 and 6. B: the same run, SIGKILLed right after its step-3 checkpoint
    is complete. C: B resumed (found by scanning the run folder) to step 6.
    Asserts: training prints the LSTM dtypes `lstm_compute_dtypes` reports; reloading B's step-3 checkpoint as
    train.py does restores model, optimizer, LR schedule, GradScaler, every RNG (CUDA's too) and the loader position
    exactly; C says it resumed at step 3; at step 6, C's and A's counters, loader position, schedule, scaler,
    optimizer step counts and torch/CUDA/numpy RNG states are equal exactly (none depend on kernel rounding).
    Weights and optimizer moments: bit-exact when A and B - two fresh runs - agree bit for bit at step 3 (the kernels
    are run-to-run deterministic here, as on CPU with train.deterministic, and a correct resume then changes nothing);
    otherwise (cuDNN/cuBLAS may not be, even under torch.use_deterministic_algorithms, which train.py applies on
    CUDA with warn_only) within rtol 1e-3 / atol 1e-4, while a lost state (an RNG, the scaler's scale, a loader
    position) moves weights by about a learning rate (2e-3 in the debug config) per step. The test prints which held.
    """
    a, b = tmp_path / "a", tmp_path / "b"
    res = train(tiny_shards, a, precision)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    cfg = config.load(TrainConfig, a / "config.toml")
    probe = DeepJ(cfg.model).to(DEVICE)
    lstm = lstm_compute_dtypes(probe, torch.device(DEVICE), precision)
    assert f"precision {precision}: LSTMs compute in {', '.join(sorted(str(d) for d in lstm))}" in res.stdout

    res = train(tiny_shards, b, precision, env={"DEEPJ_FAULT": "before-latest:3:0"})
    assert res.returncode != 0, "the fault hook should have killed run B after its step-3 checkpoint"
    assert (b / "step-00000003" / "COMPLETE").is_file() and not (b / "step-00000006").exists()
    assert_restores_exactly(b, 3)

    res = train(tiny_shards, b, precision)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"resumed from {b / 'step-00000003'} at step 3" in res.stdout

    a3, b3, a6, c6 = load_ckpt(a, 3), load_ckpt(b, 3), load_ckpt(a, 6), load_ckpt(b, 6)
    deterministic = max_diff(a3[0]["engine"]["model"], b3[0]["engine"]["model"]) == 0.0
    print(f"{precision} on {DEVICE}: fresh runs bit-identical at step 3: {deterministic}; resumed vs uninterrupted at "
          f"step 6: max weight difference {max_diff(a6[0]['engine']['model'], c6[0]['engine']['model']):.3g}")
    assert_same_run_state(a3, b3, exact_floats=deterministic)
    assert_same_run_state(a6, c6, exact_floats=deterministic)


# -------------------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("mode", ["stateful", "window"])
def test_batched_generation(mode):
    """A random-init model on DEVICE, 4 pieces at once (three one-hot styles and a mixture): a (4, steps, N, 3)
    float32 roll on the CPU with valid values (play and replay in {0, 1}, replay only where played and sounding the
    step before, volume in [0, 1] and 0 where silent), the same roll again for the same seed and another for another
    seed, the model left on its device in its mode. (Rolls on CPU and GPU are not compared: the uniforms come from
    different generators.)"""
    torch.manual_seed(0)
    model = DeepJ(ModelConfig(num_notes=24, num_styles=3, style_dim=8, conv_filters=6, conv_kernel=5, time_hidden=16,
                              note_hidden=12)).to(DEVICE)
    style = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.25, 0.25]])  # (B, S)
    cfg = SampleConfig(steps=32, mode=mode, window=8)

    def roll_for(seed: int) -> torch.Tensor:
        return generate(model, style, cfg, torch.Generator(device=DEVICE).manual_seed(seed))

    roll = roll_for(0)
    assert roll.shape == (4, 32, 24, 3) and roll.dtype == torch.float32 and roll.device.type == "cpu"
    assert model.training and next(model.parameters()).device.type == DEVICE
    play, replay, volume = roll.unbind(-1)  # (B, steps, N) each
    assert set(play.unique().tolist()) == {0.0, 1.0}  # something plays and something does not
    assert set(replay.unique().tolist()) <= {0.0, 1.0}
    assert (replay <= play).all()
    assert (replay[:, 0] == 0).all() and (replay[:, 1:] <= play[:, :-1]).all()
    assert (volume[play == 0] == 0).all() and ((volume >= 0) & (volume <= 1)).all()
    assert (play.sum(dim=(1, 2)) > 0).all()  # every piece of the batch was sampled, not only the first
    assert torch.equal(roll_for(0), roll)
    assert not torch.equal(roll_for(1), roll)
