"""Training: gradient equivalence across ranks and accumulation, a real torchrun debug run, TensorBoard, resume and
errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import run_cli

from deepj.model import DeepJ, ModelConfig
from deepj.training.engine import DDPEngine
from deepj.training.loss import deepj_loss
from deepj.training.optim import OptimConfig, build_optimizer, build_scheduler

TINY = ModelConfig(num_notes=12, num_styles=3, style_dim=8, conv_filters=4, conv_kernel=5, time_hidden=8,
                   note_hidden=6, dropout=0.0, input_dropout=0.0)


def global_batch(n: int = 16, t: int = 6):
    """A fixed random global batch: (n, t, N, 3) rolls whose play density differs from window to window."""
    g = torch.Generator().manual_seed(1)
    density = torch.rand(n, 1, 1, generator=g) * 0.5  # windows from almost silent to dense
    play = (torch.rand(n, t + 1, TINY.num_notes, generator=g) < density).double()
    replay = play * (torch.rand(play.shape, generator=g) < 0.3).double()
    vol = play * torch.rand(play.shape, generator=g, dtype=torch.float64)
    notes = torch.stack([play, replay, vol], -1)  # (n, t+1, N, 3)
    beat = torch.arange(t).repeat(n, 1) % 16
    style = torch.eye(3, dtype=torch.float64)[torch.arange(n) % 3]
    return notes[:, :-1], notes[:, 1:], beat, style


def make_engine(accumulation: int, distributed: bool, dtype: torch.dtype = torch.float64,
                optim: OptimConfig | None = None) -> DDPEngine:
    optim = OptimConfig() if optim is None else optim
    torch.manual_seed(0)
    model = DeepJ(TINY).to(dtype)
    opt = build_optimizer(model.parameters(), optim)
    return DDPEngine(model, opt, build_scheduler(opt, optim, 10), device=torch.device("cpu"),
                     distributed=distributed, accumulation=accumulation)


def grads_after_accumulation(engine: DDPEngine, micro_batches) -> list[torch.Tensor]:
    """The loop's micro-step pattern: no_sync on all but the last micro-batch, then read the gradients."""
    for i, (prev, target, beat, style) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        ctx = engine.no_sync() if not last else torch.enable_grad()
        with ctx:
            loss, _ = deepj_loss(engine(prev, target, beat, style), target)
            engine.backward(loss)
    return [p.grad.clone() if p.grad is not None else None for p in engine.module.parameters()]


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    prev, target, beat, style = global_batch()
    # Global batch 16 = micro 4 x accumulation 2 x world 2; rank r takes windows [8r, 8r + 8) as two micro-batches.
    lo = rank * 8
    micro = [tuple(x[lo + 4 * m: lo + 4 * m + 4] for x in (prev, target, beat, style)) for m in range(2)]
    grads = grads_after_accumulation(make_engine(accumulation=2, distributed=True), micro)
    if rank == 0:
        torch.save(grads, out_file)
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_accumulation_matches_one_process_gradients(tmp_path):
    """docs/design.md, distributed pitfall 14: DDP 2 ranks x accumulation 2 x micro 4 == 1 process x batch 16, in
    float64.

    The engine divides each micro-batch's mean loss by the accumulation count (2) and DDP averages over ranks (2):
    sum over 4 micro-batches of grad(mean_4) / 4 == grad(mean_16), since every micro-batch holds 4 of the 16 windows.
    That holds only if the loss is a mean over windows; the loss normalises its masked terms per window, so windows
    of different note density (this batch has them) do not break it.
    """
    out = tmp_path / "grads.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    ref = grads_after_accumulation(make_engine(accumulation=1, distributed=False), [global_batch()])
    assert len(ddp) == len(ref)
    for a, b in zip(ddp, ref):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (a - b).abs().max()
    # The comparison can fail: dropping the accumulation division doubles the gradient.
    assert not torch.allclose(ddp[0] * 2, ref[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, timeout: int = 600, env: dict | None = None):
    return run_cli("-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
                   "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "-m", "deepj.train", *args,
                   timeout=timeout, env_extra=env)


EXPECTED_TAGS = {"train/loss", "train/play", "train/replay", "train/volume", "train/lr", "train/grad_norm",
                 "perf/windows_per_s", "perf/note_steps_per_s", "perf/data_wait_frac",
                 "val/loss", "val/play", "val/replay", "val/volume"}


def read_tb(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.mark.slow
def test_debug_run_under_torchrun_checkpoints_tensorboard_and_resume(tiny_shards, tmp_path):
    run = tmp_path / "run"
    res = torchrun("--config", "configs/debug.toml", f"data.dir={tiny_shards}", f"run.dir={run}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (run / "step-00000010" / "COMPLETE").is_file() and (run / "step-00000020" / "COMPLETE").is_file()
    assert (run / "latest").read_text().strip() == "step-00000020"
    assert (run / "config.toml").is_file()
    assert "step 20/20" in res.stdout and "ETA" in res.stdout
    acc = read_tb(run)
    tags = set(acc.Tags()["scalars"])
    assert EXPECTED_TAGS <= tags, EXPECTED_TAGS - tags
    assert any(t.startswith("samples/") for t in acc.Tags()["images"])
    assert [e.step for e in acc.Scalars("train/loss")] == [5, 10, 15, 20]

    # Resume continues the step count in the same run folder, and TensorBoard keeps each step once.
    res = torchrun("--config", "configs/debug.toml", f"data.dir={tiny_shards}", f"run.dir={run}", "train.max_steps=30")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "at step 20" in res.stdout
    assert (run / "step-00000030" / "COMPLETE").is_file()
    steps = [e.step for e in read_tb(run).Scalars("train/loss")]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert len(list((run / "tb").iterdir())) >= 1 and not (run / "tb" / "tb").exists()


def test_unknown_config_key_is_refused(tiny_shards, tmp_path):
    res = run_cli("-m", "deepj.train", "--config", "configs/debug.toml", f"data.dir={tiny_shards}",
                  f"run.dir={tmp_path}", "train.max_stepz=3")
    assert res.returncode == 2
    assert "train.max_stepz" in res.stderr and "train.max_steps" in res.stderr


def test_global_batch_must_divide(tiny_shards, tmp_path):
    res = run_cli("-m", "deepj.train", "--config", "configs/debug.toml", f"data.dir={tiny_shards}",
                  f"run.dir={tmp_path}", "train.global_batch=6", "train.micro_batch=4")
    assert res.returncode == 2
    assert "train.global_batch=6" in res.stdout and "micro" in res.stdout


def test_missing_data_dir_is_clear(tmp_path):
    res = run_cli("-m", "deepj.train", "--config", "configs/debug.toml", f"data.dir={tmp_path / 'nope'}",
                  f"run.dir={tmp_path / 'run'}")
    assert res.returncode == 2
    assert "manifest.json" in res.stdout and "deepj.preprocess" in res.stdout


def test_precision_auto_is_resolved_and_saved(tiny_shards, tmp_path):
    """train.precision=auto becomes bf16 where this CPU has native bf16 (oneDNN's check), else fp32, and the run
    folder's config.toml (which generate and resume read) holds the resolved value, never "auto"."""
    from deepj.training.engine import resolve_precision

    cpu = torch.device("cpu")
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert [resolve_precision(p, cpu) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    res = run_cli("-m", "deepj.train", "--config", "configs/debug.toml", f"data.dir={tiny_shards}",
                  f"run.dir={tmp_path}", "train.precision=auto", "train.max_steps=2", "log.sample_every=0")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    saved = (tmp_path / "config.toml").read_text()
    assert f'precision = "{resolve_precision("auto", cpu)}"' in saved and 'precision = "auto"' not in saved


@pytest.mark.parametrize("name", ["debug", "demo", "paper"])
def test_shipped_configs_load(name):
    """Every shipped config is valid against the code (litgpt's habit)."""
    from deepj import config
    from deepj.training.config import TrainConfig

    cfg = config.load(TrainConfig, f"configs/{name}.toml")
    assert cfg.train.global_batch % cfg.train.micro_batch == 0


def test_lstm_compute_dtype_probe_on_cpu():
    """docs/design.md, distributed pitfall 15, CPU side: the probe reports what the LSTMs really compute in under each
    precision setting."""
    from deepj.training.engine import lstm_compute_dtypes

    model = DeepJ(TINY)
    cpu = torch.device("cpu")
    assert lstm_compute_dtypes(model, cpu, "fp32") == {torch.float32}
    assert lstm_compute_dtypes(model, cpu, "bf16") == {torch.bfloat16}
    assert model.training  # the probe restores the mode


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lstm_compute_dtype_probe_on_cuda():
    """docs/design.md, distributed pitfall 15, on CUDA: fp16 autocast runs the cuDNN LSTMs in fp16; record what bf16
    autocast really does."""
    from deepj.training.engine import lstm_compute_dtypes

    model = DeepJ(TINY).cuda()
    dev = torch.device("cuda")
    assert lstm_compute_dtypes(model, dev, "fp16") == {torch.float16}
    assert lstm_compute_dtypes(model, dev, "bf16") <= {torch.float16, torch.bfloat16}


def test_play_only_run_trains_and_checkpoints(tiny_shards, tmp_path):
    """model.play_only=true through the real entry: the loss has the play term only, and the loop logs only the terms
    the loss returns (reading replay and volume there would fail at the first step)."""
    run = tmp_path / "run"
    res = run_cli("-m", "deepj.train", "--config", "configs/debug.toml", f"data.dir={tiny_shards}", f"run.dir={run}",
                  "model.play_only=true", "train.max_steps=4", "checkpoint.every=2", "log.every=2", "train.val_every=2",
                  "log.sample_every=2")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (run / "step-00000004" / "COMPLETE").is_file()
    tags = set(read_tb(run).Tags()["scalars"])
    assert {"train/loss", "train/play", "val/loss", "val/play"} <= tags and "train/replay" not in tags
    meta = json.loads((run / "step-00000004" / "meta.json").read_text())
    assert meta["model"]["play_only"] is True and meta["step"] == 4


def test_meta_json_says_what_a_checkpoint_holds_without_torch(trained_run):
    """meta.json is plain JSON beside the tensors: model config, styles, pitch range, corpus, step, world size."""
    ckpt = trained_run / "step-00000004"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["kind"] == "train" and meta["step"] == 4 and meta["world_size"] == 1
    assert meta["styles"] == ["baroque/bach", "baroque/handel", "classical/mozart"]
    assert meta["representation"] == {"min_pitch": 36, "max_pitch": 84, "sustain": True}
    assert meta["model"]["num_notes"] == 48
    assert meta["config"]["data"]["seq_len"] == 32 and len(meta["manifest_hash"]) == 16
    assert "meta.json" in json.loads((ckpt / "COMPLETE").read_text())["files"]


def test_checkpoint_written_before_meta_json_still_loads(trained_run, tmp_path):
    """A checkpoint from before meta.json (the metadata inside train.pt) loads through load_model and generates."""
    import shutil

    from deepj.training import checkpoint

    old = tmp_path / "run" / "step-00000004"
    shutil.copytree(trained_run / "step-00000004", old)
    meta = json.loads((old / "meta.json").read_text())
    shared = torch.load(old / "train.pt", weights_only=True)
    shared.update(config=meta["config"], step=4, world_size=1, manifest_hash=meta["manifest_hash"],
                  styles=meta["styles"], levels=meta["levels"], representation=meta["representation"])
    torch.save(shared, old / "train.pt")
    (old / "meta.json").unlink()
    files = {p.name: p.stat().st_size for p in old.iterdir() if p.name != "COMPLETE"}
    (old / "COMPLETE").write_text(json.dumps({"step": 4, "world_size": 1, "files": files}))
    model, got, _ = checkpoint.load_model(old)
    assert got.step == 4 and got.styles.styles == tuple(meta["styles"]) and got.model.num_notes == 48
    res = run_cli("-m", "deepj.generate", str(old), "--style", "baroque", "--bars", "1", "--out", str(tmp_path / "g"))
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("key", ["model.num_notes=88", "model.num_styles=5"])
def test_model_sizes_that_disagree_with_the_data_are_refused(tiny_shards, tmp_path, key):
    res = run_cli("-m", "deepj.train", "--config", "configs/debug.toml", f"data.dir={tiny_shards}",
                  f"run.dir={tmp_path}", key, "train.max_steps=1")
    assert res.returncode == 2
    assert key.split("=")[0] in res.stdout and "manifest.json" in res.stdout


@pytest.mark.parametrize("key", ["log.every=0", "checkpoint.keep=0", "checkpoint.keep=-1", "optim.lr=inf",
                                 "optim.lr=-1", "optim.lr=nan", "optim.grad_clip=nan", "optim.warmup_steps=-3",
                                 "train.max_steps=0", "train.micro_batch=0", "train.val_batches=-1", "data.seq_len=0"])
def test_invalid_values_are_refused_naming_the_key(tiny_shards, tmp_path, key):
    res = run_cli("-m", "deepj.train", "--config", "configs/debug.toml", f"data.dir={tiny_shards}",
                  f"run.dir={tmp_path}", key)
    assert res.returncode == 2
    assert key.split("=")[0] in res.stderr, res.stderr


def test_resume_accepts_a_dropout_change_and_refuses_another_shape(trained_run, tiny_shards, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    common = ("--config", "configs/debug.toml", f"data.dir={tiny_shards}", f"run.dir={run}", "log.sample_every=0",
              "train.val_every=0")
    res = run_cli("-m", "deepj.train", *common, "model.time_hidden=24", "train.max_steps=5")
    assert res.returncode == 2 and "model.time_hidden: 32 -> 24" in res.stdout, res.stdout[-2000:]
    res = run_cli("-m", "deepj.train", *common, "model.dropout=0.1", "train.max_steps=5")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "resume: model.dropout changed: 0.5 -> 0.1" in res.stdout and "at step 4" in res.stdout


def test_a_time_budget_sizes_max_steps_from_the_measured_speed(tiny_shards, tmp_path):
    """train.time_budget_min: the first steps are timed, max_steps shrinks to what fits (the console says so and
    config.toml records it), training ends there; the same command again resumes with that size, not the given one."""
    run = tmp_path / "run"
    cmd = ("-m", "deepj.train", "--config", "configs/debug.toml", f"data.dir={tiny_shards}", f"run.dir={run}",
           "log.sample_every=0", "train.val_every=0", "checkpoint.every=0", "train.max_steps=100000",
           "train.time_budget_min=0.1", "optim.warmup_steps=30")
    res = run_cli(*cmd, check=True)
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("time budget 0.1 min:"))
    sized = int(line.split("train.max_steps 100000 -> ")[1].split()[0])
    assert 25 < sized < 100000, line
    assert f"max_steps = {sized}" in (run / "config.toml").read_text()
    assert sorted(p.name for p in run.glob("step-*")) == [f"step-{sized:08d}"]
    res = run_cli(*cmd, check=True)
    assert f"train.max_steps {sized}, as the run's start sized it" in res.stdout, res.stdout[-2000:]
    assert sorted(p.name for p in run.glob("step-*")) == [f"step-{sized:08d}"]
