"""`python -m deepj.launch doctor`: what this machine offers for training, and each problem with its fix.

Prints `name: value` lines, then one `problem: ... fix: ...` line per problem. A CPU-only machine is a valid set-up
(exit 0); the exit status is 1 only for a broken install: torch, numpy, webdataset or deepj itself not importable.
Imports are done here, inside functions, so that a broken torch is reported rather than raised.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

MIN_SHM_BYTES = 1 << 30  # DataLoader workers hand batches over through /dev/shm
MIN_FREE_DISK_BYTES = 2 << 30  # a few checkpoints and TensorBoard events


@dataclass
class Report:
    facts: list[tuple[str, str]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (problem, fix)
    broken: bool = False

    def fact(self, name: str, value: object) -> None:
        self.facts.append((name, str(value)))

    def problem(self, what: str, fix: str) -> None:
        self.problems.append((what, fix))

    def text(self) -> str:
        width = max((len(n) for n, _ in self.facts), default=0)
        lines = [f"{n + ':':{width + 1}} {v}" for n, v in self.facts]
        lines += [f"problem: {p} fix: {f}" for p, f in self.problems]
        if not self.problems:
            lines.append("no problems found")
        return "\n".join(lines)


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 (a broken optional package may raise anything; the report goes on)
        return None
    return getattr(mod, "__version__", "installed")


def _nvidia_smi(query: str) -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        res = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.strip()] if res.returncode == 0 else []


def check_torch(r: Report) -> None:
    try:
        import torch
    except Exception as e:  # noqa: BLE001 (a broken torch install may raise anything on import; it is reported)
        r.broken = True
        r.fact("torch", f"NOT IMPORTABLE ({type(e).__name__}: {e})")
        r.problem("torch does not import", "run `make install` (launcher/setup.sh picks the CPU or CUDA build)")
        return
    r.fact("torch", f"{torch.__version__} (CUDA build: {torch.version.cuda or 'no, CPU only'})")
    smi_gpus = _nvidia_smi("name")
    driver = _nvidia_smi("driver_version")
    r.fact("NVIDIA driver", driver[0] if driver else "none found (no nvidia-smi or no GPU)")
    if not torch.cuda.is_available():
        r.fact("CUDA", "not available: training runs on CPU (gloo), which is a valid set-up")
        if smi_gpus and torch.version.cuda is None:
            r.problem(f"nvidia-smi sees {len(smi_gpus)} GPU(s) but torch {torch.__version__} is a CPU build",
                      "pip install torch (the CUDA build matching your driver, see https://pytorch.org/get-started/)")
        elif smi_gpus:
            r.problem("nvidia-smi sees GPUs but torch.cuda.is_available() is False (driver older than the CUDA "
                      f"{torch.version.cuda} of this torch, or CUDA_VISIBLE_DEVICES hides them)",
                      "update the NVIDIA driver or install a torch built for an older CUDA; check CUDA_VISIBLE_DEVICES")
    else:
        r.fact("CUDA", f"{torch.version.cuda}, {torch.cuda.device_count()} GPU(s) visible")
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        r.fact("cuDNN", cudnn or "not available")
        if cudnn is None:
            r.problem("cuDNN is not available: LSTMs fall back to slow kernels", "install a torch wheel with cuDNN")
        try:
            nccl = ".".join(map(str, torch.cuda.nccl.version()))
        except (AttributeError, RuntimeError) as e:  # torch built without NCCL lacks torch._C._nccl_version
            nccl = f"not available ({type(e).__name__})"
            r.problem("NCCL is not available: multi-GPU DDP needs it", "install a CUDA torch wheel (bundles NCCL)")
        r.fact("NCCL", nccl)
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            r.fact(f"GPU {i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}"
                   f", bf16 {'yes' if p.major >= 8 else 'no (use fp16 or fp32)'}")
    import torch.distributed as tdist

    backends = [b for b, ok in (("gloo", tdist.is_available() and tdist.is_gloo_available()),
                                ("nccl", tdist.is_available() and tdist.is_nccl_available())) if ok]
    r.fact("torch.distributed", ", ".join(backends) or "NOT AVAILABLE")
    if "gloo" not in backends:
        r.problem("torch.distributed has no gloo backend: multi-process CPU runs and tests cannot start",
                  "install an official torch wheel (pip install torch)")


def check_deepspeed(r: Report) -> None:
    accel_env = os.environ.get("DS_ACCELERATOR")
    r.fact("DS_ACCELERATOR", accel_env or "unset (DeepSpeed picks cuda when it sees a GPU, else cpu)")
    noise = io.StringIO()
    try:
        with contextlib.redirect_stdout(noise):  # DeepSpeed prints probes and warnings on import
            import deepspeed
            from deepspeed.accelerator import get_accelerator
            from deepspeed.git_version_info import installed_ops
            from deepspeed.ops.op_builder.all_ops import ALL_OPS
            from deepspeed.ops.op_builder.builder import probe_is_compatible

            accel = get_accelerator()._name
            ops = {name: (bool(installed_ops.get(name, False)), bool(probe_is_compatible(b, False)))
                   for name, b in ALL_OPS.items()}
    except Exception as e:  # noqa: BLE001 (not installed, or broken against this torch: any error is reported)
        r.fact("DeepSpeed", f"not importable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
        r.problem("DeepSpeed is not importable: --backend deepspeed / train.backend=deepspeed will fail",
                  "pip install -e '.[deepspeed]' (or use --backend ddp, which needs nothing more)")
        return
    r.fact("DeepSpeed", f"{deepspeed.__version__}, accelerator {accel}")
    pre = sorted(n for n, (inst, _) in ops.items() if inst)
    jit = sorted(n for n, (inst, comp) in ops.items() if comp and not inst)
    no = sorted(n for n, (inst, comp) in ops.items() if not comp and not inst)
    r.fact("DeepSpeed ops", f"prebuilt: {', '.join(pre) or 'none'}; JIT-compatible: {', '.join(jit) or 'none'}; "
           f"unavailable: {', '.join(no) or 'none'}")
    if jit and not shutil.which("ninja") and _version("ninja") is None:
        r.problem("ninja is missing: DeepSpeed cannot JIT-build its ops (deepj's default ZeRO configs do not need "
                  "them)", "pip install ninja")
    cuda = _torch_cuda()
    if cuda and accel != "cuda":
        r.problem(f"a GPU is visible but DeepSpeed's accelerator is {accel}",
                  "unset DS_ACCELERATOR (or set it to cuda)")
    if not cuda and accel == "cuda":
        r.problem("DeepSpeed's accelerator is cuda but torch sees no GPU", "export DS_ACCELERATOR=cpu")


def _torch_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 (whatever import torch raises is reported by check_torch)
        return False


def check_core(r: Report) -> None:
    """The packages deepj cannot train without, and deepj itself."""
    for name in ("numpy", "webdataset"):
        v = _version(name)
        r.fact(name, v or "NOT IMPORTABLE")
        if v is None:
            r.broken = True
            r.problem(f"{name} does not import", "pip install -e . (or make install)")
    try:
        import deepj.model  # noqa: F401  (pulls torch, the config machinery and the model)
        import deepj.train  # noqa: F401  (and data, checkpoints, engines)
    except Exception as e:  # noqa: BLE001 (whatever breaks the import is the report's finding)
        r.broken = True
        r.problem(f"deepj does not import ({type(e).__name__}: {e})", "pip install -e . from the repository root")


def check_host(r: Report, run_dir: str) -> None:
    r.fact("Python", f"{platform.python_version()} ({sys.executable})")
    r.fact("CPU cores", os.cpu_count())
    try:
        import psutil

        r.fact("host memory", f"{psutil.virtual_memory().total / 2**30:.1f} GiB")
    except ImportError:
        pass
    if os.path.isdir("/dev/shm"):
        shm = shutil.disk_usage("/dev/shm")
        r.fact("/dev/shm", f"{shm.total / 2**30:.2f} GiB ({shm.free / 2**30:.2f} GiB free)")
        if shm.total < MIN_SHM_BYTES:
            r.problem(f"/dev/shm is only {shm.total / 2**20:.0f} MiB: DataLoader workers (data.workers > 0) pass "
                      "batches through it and die with 'bus error' when it fills",
                      "docker run --shm-size=8g (or Kubernetes: an emptyDir of medium Memory at /dev/shm), or set "
                      "data.workers=0")
    else:
        r.fact("/dev/shm", "absent")
    probe = Path(run_dir).resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    r.fact("free disk", f"{free / 2**30:.1f} GiB at {probe} (run folder {run_dir})")
    if free < MIN_FREE_DISK_BYTES:
        r.problem(f"only {free / 2**20:.0f} MiB free at {probe}", "free space or point run.dir at a larger disk")


def check_music(r: Report) -> None:
    sym = _version("symusic")
    r.fact("symusic", sym or "not importable")
    if sym is None:
        r.problem("symusic does not import: preprocessing falls back to --parser pretty_midi (slower)",
                  "pip install symusic")
    r.fact("pretty_midi", _version("pretty_midi") or "not importable")
    try:
        from deepj.music.render import audio_available, find_soundfont

        ok, why = audio_available()
    except (ImportError, OSError) as e:  # render imports numpy only; a soundfont path may be unreadable
        ok, why = False, f"{type(e).__name__}: {e}"
        find_soundfont = None
    fs = shutil.which("fluidsynth")
    r.fact("fluidsynth", fs or "not found")
    r.fact("soundfont", (find_soundfont() if find_soundfont else None) or "not found")
    if not ok:
        r.problem(f"no audio for samples ({why})", "apt-get install fluidsynth fluid-soundfont-gm (samples stay "
                  "MIDI + PNG without it)")


def check_launchers(r: Report) -> None:
    found = {p: shutil.which(p) for p in ("torchrun", "deepspeed", "sbatch", "srun")}
    r.fact("launchers", ", ".join(f"{p} {'yes' if v else 'no'}" for p, v in found.items()))


def doctor(run_dir: str = "runs") -> Report:
    r = Report()
    check_host(r, run_dir)
    check_torch(r)
    if not r.broken:
        check_core(r)
        check_deepspeed(r)
    check_music(r)
    check_launchers(r)
    return r
