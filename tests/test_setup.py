"""launcher/setup.sh on a fresh environment: the CPU torch from the local wheel folder, no network retries, and a
torch that is already installed is kept. (A `--no-index` install of torch failed on its dependencies and fell back
to PyTorch's index, which cost minutes of retries where that index is unreachable.)"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def local_cpu_wheel() -> bool:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    dirs = [line.split("=", 1)[1].strip("'\"") for line in out.splitlines() if "find-links" in line]
    return any(Path(d).is_dir() and list(Path(d).glob("torch-2.13.0+cpu-*.whl")) for d in dirs)


@pytest.mark.slow
@pytest.mark.skipif(not local_cpu_wheel(), reason="no local CPU torch 2.13.0 wheel in pip's find-links")
def test_setup_installs_the_local_cpu_torch_then_keeps_it(tmp_path):
    venv.create(tmp_path / "env", with_pip=True)
    py = str(tmp_path / "env" / "bin" / "python")
    first = subprocess.run(["bash", "launcher/setup.sh", py], cwd=ROOT, capture_output=True, text=True, timeout=900)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-3000:]
    assert "installing the CPU build of torch" in out and "Retrying" not in out, out[-3000:]
    version = subprocess.run([py, "-c", "import torch, deepj; print(torch.__version__)"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert version == "2.13.0+cpu"
    again = subprocess.run(["bash", "launcher/setup.sh", py], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "setup: keeping torch 2.13.0+cpu" in again.stdout
