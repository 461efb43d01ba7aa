"""python -m deepj.launch: doctor, plan (checked against independent calculations), run (exact commands), status,
the per-node wrappers in launcher/, and real one-machine launches through torchrun and the DeepSpeed launcher."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli

from deepj import config
from deepj.data.loader import StreamingLoader
from deepj.data.manifest import Manifest
from deepj.launch.__main__ import main as launch_main
from deepj.launch.compose import LaunchError, LaunchSpec, compose
from deepj.launch.plan import activation_layout, gpu_memory
from deepj.model import DeepJ, ModelConfig
from deepj.training.config import TrainConfig
from deepj.training.loss import deepj_loss

DEBUG = "configs/debug.toml"
PAPER = "configs/paper.toml"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def launch(capsys, *args: str) -> tuple[int, str, str]:
    code = launch_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------------------------------ doctor

def test_doctor_prints_versions_and_exits_0_on_cpu(tmp_path):
    res = run_cli("-m", "deepj.launch", "doctor", "--run-dir", str(tmp_path / "runs"), timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    facts = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in out.splitlines() if ":" in line}
    assert facts["torch"].startswith(torch.__version__)
    for name in ("CUDA", "/dev/shm", "free disk", "symusic", "fluidsynth", "DeepSpeed", "DeepSpeed ops", "launchers"):
        assert name in facts, name
    assert str(tmp_path) in facts["free disk"]
    import deepspeed
    import symusic

    assert facts["DeepSpeed"].startswith(deepspeed.__version__) and facts["symusic"] == symusic.__version__
    for line in out.splitlines():  # every problem comes with its fix
        if line.startswith("problem:"):
            assert " fix: " in line


def test_doctor_fails_on_a_broken_torch(tmp_path):
    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('libtorch_cpu.so: cannot open shared object file')\n")
    env = {"PYTHONPATH": f"{shadow.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = run_cli("-m", "deepj.launch", "doctor", env_extra=env, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "NOT IMPORTABLE" in res.stdout and "problem: torch does not import fix:" in res.stdout


# ------------------------------------------------------------------------------------------------------------ plan

def measured_saved_bytes(cfg: ModelConfig, batch: int, steps: int) -> int:
    """Bytes autograd keeps for backward in one training forward (CPU), parameters excluded, plus the batch."""
    model = DeepJ(cfg).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    g = torch.Generator().manual_seed(0)
    notes = (torch.rand(batch, steps + 1, cfg.num_notes, 3, generator=g) > 0.9).float()
    beat = torch.randint(0, 16, (batch, steps), generator=g)
    style = torch.zeros(batch, cfg.num_styles)
    style[:, 0] = 1
    seen: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        deepj_loss(model(notes[:, :-1], notes[:, 1:], beat, style), notes[:, 1:])
    return sum(seen.values()) + notes.numel() * 4


def test_plan_debug_matches_independent_numbers(tiny_shards, tmp_path, capsys):
    code, out, _ = launch(capsys, "plan", "--json", "--config", DEBUG, f"data.dir={tiny_shards}",
                          f"run.dir={tmp_path / 'run'}")
    assert code == 0
    plan = json.loads(out)
    cfg = config.load(TrainConfig, REPO / DEBUG, [f"data.dir={tiny_shards}"])
    manifest = Manifest.load(tiny_shards)
    mcfg = ModelConfig(**{**cfg.model.__dict__, "num_notes": 48, "num_styles": manifest.styles.num_styles})
    params = sum(p.numel() for p in DeepJ(mcfg).parameters())
    assert plan["params"] == params and plan["config"]["num_styles"] == 3
    # steps per epoch: the loader's own count, and the windowing formula over the manifest's piece lengths
    loader = StreamingLoader(cfg.data, "train", micro_batch=4, global_batch=8)
    assert plan["data"]["steps_per_epoch"] == loader.steps_per_epoch()
    steps = manifest.piece_steps("train").tolist()
    assert plan["data"]["train"]["windows"] == sum(max(1, (t - 32) // 16 + 1) for t in steps) == loader.total_windows
    assert plan["config"]["accumulation"] == 2
    # static memory: fp32 DDP on one rank = weights + grads + two Adam moments, exactly
    mem = plan["gpu_memory"]
    assert (mem["weights"], mem["grads"], mem["optimizer"]) == (4 * params, 4 * params, 8 * params)
    assert mem["ddp_buckets"] == 0 and mem["total"] == sum(v for k, v in mem.items() if k != "total")
    # activations: the right order against what autograd really keeps on CPU. oneDNN's CPU LSTM keeps a larger
    # workspace (~16 x hidden per step) than cuDNN's reserve, which the estimate models, so CPU must be above it.
    measured = measured_saved_bytes(mcfg, 4, 32)
    assert 0.25 * measured < mem["activations"] < measured
    # the val split of the tiny corpus is small: said before anything runs
    assert any("tiny val split" in w for w in plan["warnings"]) and plan["errors"] == []
    ck = plan["checkpoint"]
    assert ck["measured"] and ck["bytes"] > 12 * params and ck["write_s"] > 0


def test_plan_paper_config_without_data(tmp_path, capsys):
    code, out, _ = launch(capsys, "plan", "--json", "--no-disk-probe", "--config", PAPER,
                          f"data.dir={tmp_path / 'none'}", "--nodes", "2", "--gpus-per-node", "2")
    assert code == 0
    plan = json.loads(out)
    paper = DeepJ(ModelConfig())  # 48 notes, 1 style slot: the defaults when there is no manifest
    params = sum(p.numel() for p in paper.parameters())
    assert plan["params"] == params and 1.2e6 < params < 1.35e6  # "about 1.27 M parameters" (configs/paper.toml)
    assert plan["config"]["world"] == 4 and plan["config"]["accumulation"] == 1  # 16 = 4 x 1 x 4
    assert any("no manifest.json" in w for w in plan["warnings"])
    mem = plan["gpu_memory"]
    assert mem["ddp_buckets"] == 4 * params  # world > 1
    # activations by hand for the paper's sizes: per cell 6319 floats + 1575 mask bytes (see activation_layout)
    lay = activation_layout(ModelConfig())
    assert (lay["floats"], lay["mask_bytes"]) == (6319, 1575)
    assert mem["activations"] == 4 * 128 * 48 * (6319 * 4 + 1575)
    measured = measured_saved_bytes(ModelConfig(), 2, 64)  # half the batch and length: a quarter of the cells
    assert 0.25 * measured < mem["activations"] / 4 < measured
    assert plan["checkpoint"]["measured"] is False


def test_plan_scales_and_warns(tmp_path, capsys):
    m = ModelConfig()
    p = sum(x.numel() for x in DeepJ(m).parameters())
    a = gpu_memory(m, p, micro_batch=4, seq_len=128, precision="fp32", backend="ddp", zero_stage=0, world=1)
    b = gpu_memory(m, p, micro_batch=8, seq_len=256, precision="fp32", backend="ddp", zero_stage=0, world=1)
    assert b["activations"] == 4 * a["activations"]
    h = gpu_memory(m, p, micro_batch=4, seq_len=128, precision="bf16", backend="ddp", zero_stage=0, world=1)
    assert h["activations"] < 0.6 * a["activations"] and h["autocast_copies"] == 2 * p
    z2 = gpu_memory(m, p, micro_batch=4, seq_len=128, precision="fp32", backend="deepspeed", zero_stage=2, world=4)
    assert z2["optimizer"] == 8 * p // 4 and z2["grads"] == 4 * p // 4 and z2["fp32_master"] == 4 * p // 4
    # over the GPU's size, and a global batch the world does not divide
    code, out, _ = launch(capsys, "plan", "--no-disk-probe", "--config", PAPER, f"data.dir={tmp_path}",
                          "--gpu-memory-gib", "2", "train.micro_batch=16", "--gpus-per-node", "1")
    assert code == 0 and "over 90% of the GPU's 2.0 GiB" in out
    code, out, _ = launch(capsys, "plan", "--no-disk-probe", "--config", PAPER, f"data.dir={tmp_path}",
                          "--gpus-per-node", "3")
    assert "error: train.global_batch=16 is not a multiple of train.micro_batch (4) x world size (3) = 12" in out
    code, _, err = launch(capsys, "plan", "--config", PAPER, "train.nonsense=1")
    assert code == 2 and "unknown config key" in err


# ------------------------------------------------------------------------------------------------------------ run

CFG = ["--config", DEBUG, "data.dir=shards/x"]
TRAIN = "-m deepj.train --config configs/debug.toml data.dir=shards/x"


@pytest.mark.parametrize("args, expected", [
    (["--backend", "ddp", "--gpus-per-node", "4"],
     f"torchrun --standalone --nnodes=1 --nproc-per-node=4 {TRAIN} train.backend=ddp"),
    (["--backend", "ddp", "--nodes", "2", "--gpus-per-node", "8", "--master-addr", "node01", "--port", "29400"],
     "torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=node01:29400 --rdzv-id=deepj "
     f"{TRAIN} train.backend=ddp"),
    (["--backend", "deepspeed", "--gpus-per-node", "2", "--cpu"],
     "DS_ACCELERATOR=cpu deepspeed --num_gpus=2 --master_port=29500 --no_local_rank --module deepj.train "
     "--config configs/debug.toml data.dir=shards/x train.backend=deepspeed run.device=cpu"),
    (["--backend", "deepspeed", "--nodes", "2", "--gpus-per-node", "4", "--hostfile", "launcher/hostfile.example"],
     "deepspeed --hostfile=launcher/hostfile.example --num_nodes=2 --num_gpus=4 --master_addr=node01 "
     "--master_port=29500 --no_local_rank --module deepj.train --config configs/debug.toml data.dir=shards/x "
     "train.backend=deepspeed"),
    (["--backend", "ddp", "--slurm", "--nodes", "4", "--gpus-per-node", "8", "--sbatch-arg=--time=24:00:00"],
     "sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 --job-name=deepj-debug --output=logs/%x-%j.out "
     "--time=24:00:00 slurm/train.sbatch --config configs/debug.toml data.dir=shards/x train.backend=ddp"),
    (["--backend", "deepspeed", "--slurm", "--nodes", "2", "--gpus-per-node", "2", "--cpu", "--job-name", "ds"],
     "sbatch --nodes=2 --ntasks-per-node=1 --export=ALL,DEEPJ_NPROC_PER_NODE=2,DS_ACCELERATOR=cpu --job-name=ds "
     "--output=logs/%x-%j.out slurm/train_deepspeed.sbatch --config configs/debug.toml data.dir=shards/x "
     "train.backend=deepspeed run.device=cpu"),
])
def test_run_dry_run_composes_the_exact_command(capsys, args, expected):
    code, out, _ = launch(capsys, "run", "--dry-run", *args, *CFG)
    assert code == 0
    assert out.splitlines()[0] == expected
    # what is printed is what would run: the same argv, and a shell line that parses back to it
    spec_cmd = expected.split(" ", 1)[1] if expected.startswith("DS_ACCELERATOR") else expected
    assert shlex.split(spec_cmd)[0] in ("torchrun", "deepspeed", "sbatch")


def test_run_refuses_what_cannot_launch(capsys):
    code, _, err = launch(capsys, "run", "--dry-run", "--nodes", "2", *CFG)
    assert code == 2 and "--master-addr" in err
    code, _, err = launch(capsys, "run", "--dry-run", "--backend", "deepspeed", "--nodes", "2", *CFG)
    assert code == 2 and "--hostfile" in err
    code, _, err = launch(capsys, "run", "--dry-run", "--backend", "ddp", *CFG, "train.backend=deepspeed")
    assert code == 2 and "contradicts --backend ddp" in err
    code, _, err = launch(capsys, "run", "--dry-run", "--config", DEBUG, "train.max_stepz=3")
    assert code == 2 and "unknown config key" in err
    # a batch the world does not divide: printed with --dry-run, never launched (deepj.train would exit 2)
    code, out, err = launch(capsys, "run", "--backend", "ddp", "--gpus-per-node", "3", *CFG)
    assert code == 2 and "not launching" in err and "not a multiple" in err and out.startswith("torchrun ")
    with pytest.raises(LaunchError, match="fewer slots"):
        compose(LaunchSpec(backend="deepspeed", nodes=2, gpus_per_node=8,
                           hostfile=str(REPO / "launcher/hostfile.example")))


# ------------------------------------------------------------------------------------------------------------ wrappers

@pytest.fixture
def argv_recorder(tmp_path) -> Path:
    """An executable that records the argv it is started with: stands in for DEEPJ_PYTHON to see what a wrapper runs."""
    rec = tmp_path / "record-argv"
    rec.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                   "open(os.environ['ARGV_OUT'], 'w').write(json.dumps(sys.argv[1:]))\n")
    rec.chmod(0o755)
    return rec


def run_wrapper(script: str, recorder: Path, tmp_path: Path, env: dict[str, str], *args: str) -> list[str]:
    import subprocess

    out = tmp_path / "argv.json"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "DEEPJ_")) and k not in ("CUDA_VISIBLE_DEVICES", "DS_ACCELERATOR")}
    res = subprocess.run(["bash", str(REPO / script), *args], env={**clean, "DEEPJ_PYTHON": str(recorder),
                         "ARGV_OUT": str(out), **env}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text())


def test_torchrun_wrapper(argv_recorder, tmp_path):
    argv = run_wrapper("launcher/torchrun.sh", argv_recorder, tmp_path, {"DEEPJ_NPROC_PER_NODE": "2"},
                       "--config", DEBUG, "train.max_steps=3")
    assert argv == ["-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--standalone",
                    "-m", "deepj.train", "--config", DEBUG, "train.max_steps=3"]
    argv = run_wrapper("launcher/torchrun.sh", argv_recorder, tmp_path,
                       {"SLURM_NNODES": "3", "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_ID": "77",
                        "DEEPJ_RDZV_HOST": "node07", "DEEPJ_RDZV_PORT": "30001"}, "--config", DEBUG)
    assert argv == ["-m", "torch.distributed.run", "--nnodes=3", "--nproc-per-node=4", "--rdzv-backend=c10d",
                    "--rdzv-endpoint=node07:30001", "--rdzv-id=77", "-m", "deepj.train", "--config", DEBUG]


def test_deepspeed_wrapper_one_node_and_hostfile(argv_recorder, tmp_path):
    argv = run_wrapper("launcher/deepspeed.sh", argv_recorder, tmp_path, {"DEEPJ_NPROC_PER_NODE": "2"},
                       "--config", DEBUG)
    assert argv == ["-m", "deepspeed.launcher.runner", "--num_gpus=2", "--master_port=29500", "--no_local_rank",
                    "--module", "deepj.train", "--config", DEBUG, "train.backend=deepspeed"]
    # the GPUs Slurm handed out are kept (--num_gpus would make DeepSpeed's launcher take GPUs 0..N-1)
    argv = run_wrapper("launcher/deepspeed.sh", argv_recorder, tmp_path, {"CUDA_VISIBLE_DEVICES": "2,3"})
    assert argv[2:4] == ["--include=localhost:2,3", "--master_port=29500"]
    argv = run_wrapper("launcher/deepspeed.sh", argv_recorder, tmp_path,
                       {"DEEPJ_NNODES": "2", "DEEPJ_NPROC_PER_NODE": "4",
                        "DEEPJ_HOSTFILE": str(REPO / "launcher/hostfile.example")}, "train.backend=deepspeed")
    assert argv == ["-m", "deepspeed.launcher.runner", f"--hostfile={REPO / 'launcher/hostfile.example'}",
                    "--num_nodes=2", "--num_gpus=4", "--master_addr=node01", "--master_port=29500",
                    "--no_local_rank", "--module", "deepj.train", "train.backend=deepspeed"]


# ------------------------------------------------------------------------------------------------------------ real

@pytest.mark.slow
def test_run_launches_torchrun_and_status_follows_the_run(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    res = run_cli("-m", "deepj.launch", "run", "--backend", "ddp", "--gpus-per-node", "2", "--cpu", "--config", DEBUG,
                  f"data.dir={tiny_shards}", f"run.dir={run_dir}", "train.max_steps=4", "checkpoint.every=2",
                  "log.sample_every=0", "train.val_every=0", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 rank(s), backend gloo" in res.stdout and "done: 4 steps" in res.stdout
    st = run_cli("-m", "deepj.launch", "status", str(run_dir))
    assert st.returncode == 0 and "finished, step 4 of 4" in st.stdout
    cfg = (run_dir / "config.toml").read_text()
    (run_dir / "config.toml").write_text(cfg.replace("max_steps = 4", "max_steps = 10"))
    st = run_cli("-m", "deepj.launch", "status", str(run_dir))
    assert st.returncode == 1 and "unfinished, step 4 of 10" in st.stdout
    st = run_cli("-m", "deepj.launch", "status", str(tmp_path / "never"))
    assert st.returncode == 2 and "no config.toml" in st.stdout


@pytest.mark.slow
def test_deepspeed_launcher_runs_two_cpu_ranks_on_one_machine(tiny_shards, tmp_path):
    """`DS_ACCELERATOR=cpu deepspeed --num_gpus=2 ...` (what `run --backend deepspeed --cpu` composes) starts two gloo
    ranks here. ZeRO stage 0: NAdam is not among the optimizers DeepSpeed's ZeRO stages accept untested."""
    res = run_cli("-m", "deepj.launch", "run", "--backend", "deepspeed", "--gpus-per-node", "2", "--cpu",
                  "--port", str(free_port()), "--config", DEBUG, f"data.dir={tiny_shards}",
                  f"run.dir={tmp_path / 'ds'}",
                  "train.max_steps=2", "checkpoint.every=2", "log.sample_every=0", "train.val_every=0",
                  "train.deepspeed_config=launcher/ds_zero0.json", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 rank(s), backend gloo" in res.stdout and "done: 2 steps" in res.stdout
    assert (tmp_path / "ds" / "step-00000002" / "deepspeed").is_dir()
