"""The launch command for N nodes x G GPUs: torchrun (DDP), the DeepSpeed launcher, or sbatch.

What each composition rests on:
- torchrun, one node: `--standalone` (a private c10d store on a free port). Several nodes: the same command on every
  node with `--rdzv-backend=c10d --rdzv-endpoint=HOST:PORT --rdzv-id=ID`; the node whose address is HOST hosts the
  store, so no node needs a rank of its own.
- DeepSpeed launcher, one node: `--num_gpus G` and no hostfile (with a hostfile, even one naming only localhost, the
  launcher insists on ssh to it). Several nodes: `--hostfile` (MPI style, `host slots=G`, see
  launcher/hostfile.example), which the launcher reaches with pdsh/ssh, and `--master_addr` = the first host.
  `--no_local_rank` because deepj.train reads LOCAL_RANK from the environment and takes no `--local_rank` argument;
  `--module` runs `deepj.train` like `python -m`. On a machine without GPUs `DS_ACCELERATOR=cpu` (`--cpu`) makes it
  start G CPU processes (checked here: `DS_ACCELERATOR=cpu deepspeed --num_gpus 2 ...` runs 2 gloo ranks).
- sbatch: `slurm/train.sbatch` (torchrun per node) or `slurm/train_deepspeed.sbatch` (DeepSpeed launcher per node),
  one task per node; the trainer's arguments follow the script. On CPUs (`--cpu`) no GPUs are requested and the
  process count per node travels in DEEPJ_NPROC_PER_NODE.
The backend the launcher implies is written into the overrides (`train.backend=...`), so config and launcher agree.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

BACKENDS = ("ddp", "deepspeed")
SBATCH_SCRIPTS = {"ddp": "slurm/train.sbatch", "deepspeed": "slurm/train_deepspeed.sbatch"}
DEFAULT_PORT = 29500


class LaunchError(ValueError):
    """A launch request that cannot be composed; the message says which option to change."""


@dataclass
class LaunchSpec:
    backend: str = "ddp"
    nodes: int = 1
    gpus_per_node: int = 1
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    slurm: bool = False
    cpu: bool = False  # CPU processes instead of GPUs (DS_ACCELERATOR=cpu, run.device=cpu, no GPU request)
    master_addr: str | None = None  # rendezvous host for several nodes without Slurm
    port: int = DEFAULT_PORT
    rdzv_id: str = "deepj"
    hostfile: str | None = None  # DeepSpeed, several nodes
    job_name: str | None = None  # sbatch; default deepj-<config stem>
    log_dir: str = "logs"  # sbatch --output folder (created by `run` before it submits)
    sbatch_args: list[str] = field(default_factory=list)  # passed to sbatch before the script (--time, --account ...)


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # set on top of the caller's environment
    note: str = ""  # printed after the command (e.g. "run this on each of the 2 nodes")

    def shell(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (prefix + " " if prefix else "") + shlex.join(self.argv)


def _override_value(overrides: list[str], key: str) -> str | None:
    for item in overrides:
        k, sep, v = item.partition("=")
        if sep and k.strip() == key:
            return v.strip()
    return None


def trainer_args(spec: LaunchSpec) -> list[str]:
    """`--config X overrides...` for deepj.train, with the backend (and device, on CPUs) the launcher implies."""
    overrides = list(spec.overrides)
    given = _override_value(overrides, "train.backend")
    if given is not None and given != spec.backend:
        raise LaunchError(f"override train.backend={given} contradicts --backend {spec.backend}; drop one of them")
    if given is None:
        overrides.append(f"train.backend={spec.backend}")
    if spec.cpu and _override_value(overrides, "run.device") is None:
        overrides.append("run.device=cpu")
    return (["--config", spec.config] if spec.config else []) + overrides


def read_hostfile(path: str | Path) -> list[tuple[str, int]]:
    """An MPI-style hostfile (`host slots=N` per line, # comments) -> [(host, slots)]."""
    hosts = []
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise LaunchError(f"cannot read hostfile {path}: {e.strerror or e}") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        slots = 1
        for p in parts[1:]:
            key, _, val = p.partition("=")
            if key == "slots":
                try:
                    slots = int(val)
                except ValueError:
                    raise LaunchError(f"{path}, line {n}: slots={val!r} is not a number") from None
        hosts.append((parts[0], slots))
    if not hosts:
        raise LaunchError(f"hostfile {path} names no host (expected lines like 'node01 slots=4')")
    return hosts


def _check(spec: LaunchSpec) -> None:
    if spec.backend not in BACKENDS:
        raise LaunchError(f"--backend {spec.backend!r}: choose one of {', '.join(BACKENDS)}")
    if spec.nodes < 1 or spec.gpus_per_node < 1:
        raise LaunchError(f"--nodes and --gpus-per-node must be at least 1 (got {spec.nodes}, {spec.gpus_per_node})")
    if not 0 < spec.port < 65536:
        raise LaunchError(f"--port {spec.port} is not a TCP port")


def compose(spec: LaunchSpec) -> Command:
    _check(spec)
    if spec.slurm:
        return compose_sbatch(spec)
    if spec.backend == "deepspeed":
        return compose_deepspeed(spec)
    return compose_torchrun(spec)


def compose_torchrun(spec: LaunchSpec) -> Command:
    argv = ["torchrun"]
    note = ""
    if spec.nodes == 1:
        argv += ["--standalone", "--nnodes=1", f"--nproc-per-node={spec.gpus_per_node}"]
    else:
        if not spec.master_addr:
            raise LaunchError(f"--nodes {spec.nodes} without Slurm needs --master-addr HOST (the node that hosts the "
                              "c10d rendezvous; any of the nodes), or use --slurm")
        argv += [f"--nnodes={spec.nodes}", f"--nproc-per-node={spec.gpus_per_node}", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={spec.master_addr}:{spec.port}", f"--rdzv-id={spec.rdzv_id}"]
        note = f"run this same command on each of the {spec.nodes} nodes (they meet at {spec.master_addr}:{spec.port})"
    return Command(argv + ["-m", "deepj.train", *trainer_args(spec)], note=note)


def compose_deepspeed(spec: LaunchSpec) -> Command:
    env = {"DS_ACCELERATOR": "cpu"} if spec.cpu else {}
    argv = ["deepspeed"]
    if spec.nodes == 1 and not spec.hostfile:
        argv += [f"--num_gpus={spec.gpus_per_node}", f"--master_port={spec.port}"]
    else:
        if not spec.hostfile:
            raise LaunchError(f"--backend deepspeed --nodes {spec.nodes} without Slurm needs --hostfile FILE "
                              "(lines 'host slots=G', see launcher/hostfile.example), or use --slurm")
        hosts = read_hostfile(spec.hostfile)
        if len(hosts) < spec.nodes:
            raise LaunchError(f"hostfile {spec.hostfile} names {len(hosts)} host(s), fewer than --nodes {spec.nodes}")
        short = [h for h, slots in hosts[: spec.nodes] if slots < spec.gpus_per_node]
        if short:
            raise LaunchError(f"hostfile {spec.hostfile}: {', '.join(short)} offer fewer slots than --gpus-per-node "
                              f"{spec.gpus_per_node}")
        master = spec.master_addr or hosts[0][0]
        argv += [f"--hostfile={spec.hostfile}", f"--num_nodes={spec.nodes}", f"--num_gpus={spec.gpus_per_node}",
                 f"--master_addr={master}", f"--master_port={spec.port}"]
    argv += ["--no_local_rank", "--module", "deepj.train", *trainer_args(spec)]
    note = "the DeepSpeed launcher starts every node over pdsh/ssh from here" if spec.nodes > 1 else ""
    return Command(argv, env=env, note=note)


def default_job_name(spec: LaunchSpec) -> str:
    return spec.job_name or ("deepj-" + Path(spec.config).stem if spec.config else "deepj-train")


def compose_sbatch(spec: LaunchSpec) -> Command:
    argv = ["sbatch", f"--nodes={spec.nodes}", "--ntasks-per-node=1"]
    if spec.cpu:
        exports = [f"DEEPJ_NPROC_PER_NODE={spec.gpus_per_node}"]
        if spec.backend == "deepspeed":
            exports.append("DS_ACCELERATOR=cpu")
        argv.append("--export=ALL," + ",".join(exports))
    else:
        argv.append(f"--gpus-per-node={spec.gpus_per_node}")
    argv += [f"--job-name={default_job_name(spec)}", f"--output={spec.log_dir}/%x-%j.out", *spec.sbatch_args,
             SBATCH_SCRIPTS[spec.backend], *trainer_args(spec)]
    run_dir = _override_value(spec.overrides, "run.dir") or f"runs/{default_job_name(spec)} (DEEPJ_RUN_DIR overrides)"
    note = (f"submit from the repository root; log {spec.log_dir}/{default_job_name(spec)}-JOBID.out, run folder "
            f"{run_dir}; preempted or timed-out jobs checkpoint, requeue and resume there")
    return Command(argv, note=note)


def resolve_program(argv: list[str]) -> list[str]:
    """For running (not printing): torchrun/deepspeed from this Python's environment when not on PATH."""
    prog = argv[0]
    if shutil.which(prog):
        return argv
    if prog == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    if prog == "deepspeed":
        return [sys.executable, "-m", "deepspeed.launcher.runner", *argv[1:]]
    raise LaunchError(f"{prog} is not on PATH (is Slurm's client installed here?)")
