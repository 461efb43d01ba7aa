"""A real one-node Slurm for tests: munged, slurmctld and slurmd started as root on this machine, in a private folder.

Facts this rests on (docs/design.md, distributed pitfall 12): Debian's `slurm-wlm` 22.05 and `munge`; every daemon as
root (`SlurmUser=root`); `ProctrackType=proctrack/linuxproc` and `TaskPlugin=task/none`, so no cgroup set-up is needed;
`SelectType=select/cons_tres`. Everything lives under one folder (config, state, spool, logs, the munge key and socket)
and the daemons listen on non-default ports, so a Slurm or munged already on the machine is left alone. Client commands
find this cluster through `SLURM_CONF` (use `cluster.env`).

    cluster = SlurmCluster(Path("/tmp/x")); cluster.start(); ...; cluster.stop()

`ensure_installed()` installs the packages with apt-get when they are missing; `unavailable_reason()` says why this
machine cannot run the cluster (not root, no apt-get), or None.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")


class SlurmClusterError(RuntimeError):
    """The cluster could not be installed or started; the message carries the relevant log tail."""


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return f"the one-node Slurm runs its daemons as root; this test runs as uid {os.geteuid()}"
    if all(shutil.which(d) for d in DAEMONS) and shutil.which("sbatch"):
        return None
    if not shutil.which("apt-get"):
        return "slurm-wlm/munge are not installed and apt-get is not available to install them"
    return None


def ensure_installed(timeout: int = 900) -> None:
    """apt-get install slurm-wlm and munge when any of their programs is missing (as the test brief asks)."""
    if all(shutil.which(d) for d in DAEMONS) and shutil.which("sbatch"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if res.returncode != 0:
            raise SlurmClusterError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-2000:]}\n"
                                    f"{res.stderr[-2000:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else f"({path} not written)"


class SlurmCluster:
    def __init__(self, base: Path, cpus: int | None = None, memory_mb: int | None = None):
        self.base = Path(base)
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        if memory_mb is None:
            memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        self.memory_mb = memory_mb
        self.conf = self.base / "slurm.conf"
        self.munge_dir = self.base / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.started: list[str] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment for client commands (sbatch, squeue, scontrol, scancel) talking to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True, timeout: int = 60) -> subprocess.CompletedProcess:
        res = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and res.returncode != 0:
            raise SlurmClusterError(f"{' '.join(cmd)} exited {res.returncode}: {res.stdout}{res.stderr}")
        return res

    # ------------------------------------------------------------------ set-up
    def _write_config(self) -> None:
        for sub in ("state", "spool", "munge", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        self.munge_dir.chmod(0o700)  # munged refuses a socket folder that others may write to
        key = self.munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        b = self.base
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        self.conf.write_text(f"""\
# One-node test cluster written by tests/slurm_cluster.py
ClusterName=deepjtest
SlurmctldHost={self.node}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/slurmctld.pid
SlurmdPidFile={b}/slurmd.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=30
MinJobAge=600
NodeName={self.node} CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
""")

    def start(self, timeout: float = 60.0) -> None:
        self._write_config()
        m = self.munge_dir
        self._daemon("munged", ["munged", "--force", f"--socket={self.munge_socket}", f"--key-file={m / 'munge.key'}",
                                f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}",
                                f"--seed-file={m / 'munged.seed'}"], m / "munged.log")
        self._daemon("slurmctld", ["slurmctld", "-f", str(self.conf)], self.base / "log/slurmctld.log")
        self._daemon("slurmd", ["slurmd", "-f", str(self.conf)], self.base / "log/slurmd.log")
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            res = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            state = res.stdout.strip()
            if res.returncode == 0 and state.rstrip("*") in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        raise SlurmClusterError(f"node {self.node} not idle after {timeout:.0f}s (sinfo: {state!r})\n"
                                f"slurmctld.log:\n{_tail(self.base / 'log/slurmctld.log')}\n"
                                f"slurmd.log:\n{_tail(self.base / 'log/slurmd.log')}")

    def _daemon(self, name: str, cmd: list[str], log: Path) -> None:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=self.env)
        if res.returncode != 0:
            raise SlurmClusterError(f"{name} did not start (exit {res.returncode}): {res.stderr}\n{_tail(log)}")
        self.started.append(name)

    # ------------------------------------------------------------------ tear-down
    def _pid(self, name: str) -> int | None:
        path = {"munged": self.munge_dir / "munged.pid", "slurmctld": self.base / "slurmctld.pid",
                "slurmd": self.base / "slurmd.pid"}[name]
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel this cluster's jobs, stop slurmd and slurmctld, then munged; each by the pid it wrote."""
        if "slurmctld" in self.started:
            # The cluster is private, so every job in it is ours. slurmstepd outlives slurmd: wait until the jobs'
            # processes are gone (Slurm SIGKILLs them KillWait = 30 s after the TERM) before stopping the daemons.
            self.run("scancel", "--user=root", check=False)
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline:
                res = self.run("squeue", "-h", "-o", "%i", check=False)
                if res.returncode != 0 or not res.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            if name not in self.started:
                continue
            pid = self._pid(name)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                os.kill(pid, signal.SIGKILL)
        self.started.clear()

    # ------------------------------------------------------------------ jobs
    def sbatch(self, *args: str, cwd: Path | None = None, env_extra: dict[str, str] | None = None) -> int:
        res = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=60,
                             env={**self.env, **(env_extra or {})}, cwd=cwd)
        if res.returncode != 0:
            raise SlurmClusterError(f"sbatch {' '.join(args)} exited {res.returncode}: {res.stdout}{res.stderr}")
        return int(res.stdout.strip().split(";")[0])

    def job(self, job_id: int | str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, StdOut ...); {} when Slurm forgot the job."""
        res = self.run("scontrol", "-o", "show", "job", str(job_id), check=False)
        if res.returncode != 0:
            return {}
        out: dict[str, str] = {}
        for field in res.stdout.split():
            k, _, v = field.partition("=")
            out.setdefault(k, v)  # array jobs print several records; the first is the one asked for
        return out

    def jobs(self, job_id: int | str) -> list[dict[str, str]]:
        """Every record `scontrol show job` prints (the tasks of an array job)."""
        res = self.run("scontrol", "-o", "show", "job", str(job_id), check=False)
        records = []
        for line in res.stdout.splitlines():
            rec: dict[str, str] = {}
            for field in line.split():
                k, _, v = field.partition("=")
                rec.setdefault(k, v)
            if rec:
                records.append(rec)
        return records

    def logs(self) -> str:
        return (f"slurmctld.log:\n{_tail(self.base / 'log/slurmctld.log')}\n"
                f"slurmd.log:\n{_tail(self.base / 'log/slurmd.log')}")
