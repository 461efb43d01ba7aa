"""python -m deepj.launch {doctor, plan, run, status}: see deepj/launch/__init__.py.

Exit statuses: 0 done; 1 doctor found a broken install, or `status` says unfinished; 2 a bad config or request;
otherwise the launched command's own status (`run` without --dry-run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from deepj.config import finite_float


def _add_layout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=1, help="GPUs (or CPU processes with --cpu) per node")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m deepj.launch", description="Check, plan and launch deepj training.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("doctor", help="versions, GPUs, DeepSpeed ops, /dev/shm, disk, audio; problems with fixes")
    d.add_argument("--run-dir", default="runs", help="where checkpoints will go (free disk is checked there)")

    p = sub.add_parser("plan", help="parameters, memory, data, checkpoint and warnings for a config")
    p.add_argument("--config", help="TOML config (configs/*.toml)")
    _add_layout(p)
    p.add_argument("--gpu-memory-gib", type=finite_float(0, lo_open=True), default=None,
                   help="GPU size to check against (default: this machine's GPU, if any)")
    p.add_argument("--no-disk-probe", action="store_true", help="do not time a 32 MiB write at the run folder")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")

    r = sub.add_parser("run", help="compose (and run, or with --slurm submit) the launch command")
    r.add_argument("--backend", choices=["ddp", "deepspeed"], default="ddp")
    _add_layout(r)
    r.add_argument("--config", help="TOML config (configs/*.toml)")
    r.add_argument("--slurm", action="store_true", help="submit slurm/train.sbatch (or train_deepspeed.sbatch)")
    r.add_argument("--dry-run", action="store_true", help="print the command only")
    r.add_argument("--cpu", action="store_true", help="CPU processes instead of GPUs (DS_ACCELERATOR=cpu, "
                   "run.device=cpu, no GPU request to Slurm)")
    r.add_argument("--master-addr", help="rendezvous host for --nodes > 1 without Slurm")
    r.add_argument("--port", type=int, default=29500, help="rendezvous / master port (default 29500)")
    r.add_argument("--rdzv-id", default="deepj", help="torchrun rendezvous id (the same on every node)")
    r.add_argument("--hostfile", help="DeepSpeed hostfile for --nodes > 1 (see launcher/hostfile.example)")
    r.add_argument("--job-name", help="Slurm job name (default deepj-<config name>); also names the run folder")
    r.add_argument("--log-dir", default="logs", help="folder of the Slurm log files (default logs)")
    r.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="extra sbatch option, repeatable (e.g. --sbatch-arg=--time=24:00:00 --sbatch-arg=-A=proj)")
    r.add_argument("overrides", nargs="*", help="key=value config overrides")

    s = sub.add_parser("status", help="exit 0 if the run folder's newest checkpoint is at train.max_steps")
    s.add_argument("run_dir")
    # Overrides may stand between options (`plan --config X a=1 --nodes 2 b=2`), which argparse's positional
    # nargs="*" does not collect: the leftovers that are key=value are overrides too.
    args, rest = ap.parse_known_args(argv)
    bad = [r for r in rest if r.startswith("-") or "=" not in r or not hasattr(args, "overrides")]
    if bad:
        ap.error(f"unrecognized arguments: {' '.join(bad)}")
    if rest:
        args.overrides = list(args.overrides) + rest
    return args


def _load_config(path, overrides):
    from deepj import config
    from deepj.training.config import TrainConfig

    return config.load(TrainConfig, path, overrides)


def cmd_doctor(args) -> int:
    from deepj.launch.doctor import doctor

    report = doctor(args.run_dir)
    print(report.text(), flush=True)
    return 1 if report.broken else 0


def cmd_plan(args) -> int:
    from deepj.config import ConfigError
    from deepj.launch.plan import GIB, format_plan, make_plan

    try:
        cfg = _load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.nodes < 1 or args.gpus_per_node < 1:
        print("--nodes and --gpus-per-node must be at least 1", file=sys.stderr)
        return 2
    gpu = int(args.gpu_memory_gib * GIB) if args.gpu_memory_gib else None
    plan = make_plan(cfg, nodes=args.nodes, gpus_per_node=args.gpus_per_node, gpu_memory_bytes=gpu,
                     probe_disk=not args.no_disk_probe)
    print(json.dumps(plan, indent=1) if args.json else format_plan(plan), flush=True)
    return 0


def cmd_run(args) -> int:
    from deepj.config import ConfigError
    from deepj.launch.compose import LaunchError, LaunchSpec, compose, resolve_program, trainer_args
    from deepj.launch.plan import make_plan

    spec = LaunchSpec(backend=args.backend, nodes=args.nodes, gpus_per_node=args.gpus_per_node, config=args.config,
                      overrides=list(args.overrides), slurm=args.slurm, cpu=args.cpu, master_addr=args.master_addr,
                      port=args.port, rdzv_id=args.rdzv_id, hostfile=args.hostfile, job_name=args.job_name,
                      log_dir=args.log_dir, sbatch_args=list(args.sbatch_arg))
    try:
        cmd = compose(spec)
        targs = trainer_args(spec)
        cfg = _load_config(args.config, targs[2:] if args.config else targs)  # refuse a bad config before launching
    except (LaunchError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plan = make_plan(cfg, nodes=args.nodes, gpus_per_node=args.gpus_per_node, probe_disk=False)
    for w in plan["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    for e in plan["errors"]:
        print(f"error: {e}", file=sys.stderr)
    print(cmd.shell(), flush=True)
    if cmd.note:
        print(f"# {cmd.note}", flush=True)
    if args.dry_run:
        return 0
    if plan["errors"]:
        print("not launching: deepj.train would refuse this configuration (see the errors above)", file=sys.stderr)
        return 2
    if args.slurm:
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)  # sbatch does not create the --output folder
    try:
        argv = resolve_program(cmd.argv)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return subprocess.call(argv, env={**os.environ, **cmd.env})


def cmd_status(args) -> int:
    from deepj.launch.status import NOT_A_RUN, run_status

    try:
        st = run_status(args.run_dir)
    except ValueError as e:
        print(f"status: {e}", file=sys.stderr)
        return NOT_A_RUN
    print(st.line(), flush=True)
    return st.exit_code


def main(argv=None) -> int:
    args = parse_args(argv)
    return {"doctor": cmd_doctor, "plan": cmd_plan, "run": cmd_run, "status": cmd_status}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
