"""The DeepSpeed backend behind the same seam: gradient equivalence (docs/design.md, distributed pitfall 14), ZeRO
0/1/2, collective checkpoint save and resume (distributed pitfall 8). DeepSpeed runs on the CPU here with
DS_ACCELERATOR=cpu and gloo."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from conftest import run_cli
from test_train import TINY, free_port, global_batch, grads_after_accumulation, make_engine

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow
DS_ENV = {"DS_ACCELERATOR": "cpu"}
# Adam-type steps divide by sqrt(v) + eps: with the default eps an element whose gradient is ~0 moves by a whole
# +-lr on float32 rounding noise, so weights after a step only compare well with an eps that keeps the update
# close to linear in the gradient. The gradient itself is compared at stage 0 with the default settings.
STEP_EPS = 1e-2


def _ds_worker(rank: int, world: int, port: int, stage: int, out_file: str) -> None:
    os.environ.update({**DS_ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from deepj import config
    from deepj.model import DeepJ
    from deepj.training import dist
    from deepj.training.config import TrainConfig
    from deepj.training.engine_deepspeed import DeepSpeedEngine
    from deepj.training.optim import OptimConfig, build_optimizer, build_scheduler

    info = dist.init_distributed("cpu")
    cfg = config.load(TrainConfig, None, [f"train.deepspeed_config=launcher/ds_zero{stage}.json", "train.micro_batch=4",
                                          "train.global_batch=16", "optim.grad_clip=0"])
    optim = OptimConfig(eps=STEP_EPS)
    torch.manual_seed(0)
    model = DeepJ(TINY)
    opt = build_optimizer(model.parameters(), optim)
    engine = DeepSpeedEngine(model, opt, build_scheduler(opt, optim, 10), train=cfg.train,
                             grad_clip=cfg.optim.grad_clip, info=info, accumulation=2)
    prev, target, beat, style = (x.float() if x.is_floating_point() else x for x in global_batch())
    lo = rank * 8  # global batch 16 = micro 4 x accumulation 2 x world 2
    micro = [tuple(x[lo + 4 * m: lo + 4 * m + 4] for x in (prev, target, beat, style)) for m in range(2)]
    grads = grads_after_accumulation(engine, micro)
    if stage > 0:
        grads = None  # ZeRO-1/2 keep reduced gradients in their own partitioned buffers, not in .grad
    engine.step()
    if rank == 0:
        params = [p.detach().clone() for p in engine.module.parameters()]
        torch.save({"grads": grads, "params": params}, out_file)
    dist.barrier()
    dist.destroy()


def reference():
    """One process, the DDP engine in float32, the whole global batch of 16 in one micro-batch, one step."""
    from deepj.training.optim import OptimConfig

    engine = make_engine(accumulation=1, distributed=False, dtype=torch.float32, optim=OptimConfig(eps=STEP_EPS))
    batch = [tuple(x.float() if x.is_floating_point() else x for x in global_batch())]
    grads = grads_after_accumulation(engine, batch)
    engine.step()
    return grads, [p.detach().clone() for p in engine.module.parameters()]


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_deepspeed_accumulation_matches_one_process(tmp_path, stage):
    """2 ranks x accumulation 2 x micro 4 under DeepSpeed == 1 process x 16: the gradient (stage 0, where it stays in
    .grad) and the weights after one Nadam step (every stage). DeepSpeed scales the loss by 1/accumulation itself; the
    seam passes it the micro-batch mean unscaled, so a double division would halve the gradient and fail here."""
    out = tmp_path / "ds.pt"
    mp.spawn(_ds_worker, args=(2, free_port(), stage, str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    ref_grads, ref_params = reference()
    if stage == 0:
        for a, b in zip(got["grads"], ref_grads):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (a - b).abs().max()
    moved = 0
    for a, b, p0 in zip(got["params"], ref_params, make_engine(1, False, torch.float32).module.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()
        moved += int(not torch.allclose(a, p0))
    assert moved > 0  # the step really changed the weights


def test_deepspeed_training_checkpoint_and_resume(tiny_shards, tmp_path):
    from test_train import torchrun

    run = tmp_path / "run"
    common = ["--config", "configs/debug.toml", f"data.dir={tiny_shards}", f"run.dir={run}", "log.sample_every=0",
              "train.backend=deepspeed", "train.deepspeed_config=launcher/ds_zero2.json", "checkpoint.every=4"]
    res = torchrun(*common, "train.max_steps=4", env=DS_ENV)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (run / "step-00000004" / "deepspeed").is_dir()
    assert (run / "step-00000004" / "COMPLETE").is_file()
    res = torchrun(*common, "train.max_steps=8", env=DS_ENV)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "at step 4" in res.stdout
    # generate needs only the checkpoint, whatever the backend
    res = run_cli("-m", "deepj.generate", str(run), "--style", "baroque", "--bars", "1", "--out", str(tmp_path / "g"))
    assert res.returncode == 0, res.stderr


def test_deepspeed_bf16_run_with_samples(tiny_shards, tmp_path):
    """DeepSpeed's bf16 mode casts the module to bf16; the samples logged during training must still be drawn (from a
    float32 copy), not die feeding float32 inputs to bf16 layers."""
    from test_train import read_tb, torchrun

    run = tmp_path / "run"
    res = torchrun("--config", "configs/debug.toml", f"data.dir={tiny_shards}", f"run.dir={run}",
                   "train.backend=deepspeed", "train.deepspeed_config=launcher/ds_zero1.json", "train.precision=bf16",
                   "train.max_steps=2", "log.sample_every=1", "log.every=1", "train.val_every=0", "checkpoint.every=2",
                   env=DS_ENV)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "LSTMs compute in torch.bfloat16" in res.stdout
    images = read_tb(run).Tags()["images"]
    assert {"samples/baroque", "samples/classical"} <= set(images)
    assert (run / "step-00000002" / "COMPLETE").is_file()
