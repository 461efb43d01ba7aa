"""The guard for refactors: the debug config's loss curve on CPU, one process and two gloo ranks, against a golden file.

A change to initialisation, window order, augmentation, dropout or loss normalisation moves these numbers; a pure
refactor does not. The runs are the real entry (`python -m deepj.train`, and torchrun for two ranks) on the tiny
corpus of conftest.py, with one thread per rank and `train.deterministic` (the default), read back from the
TensorBoard event file.

Refresh only on purpose, and say so in the commit: `DEEPJ_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_loss.py`.

Tolerance: the same run under each of PyTorch's CPU kernel sets (ATEN_CPU_CAPABILITY=default, avx2, avx512) with
oneDNN held to the same level (ONEDNN_MAX_CPU_ISA) differs from this file by at most 2.0e-7 relative over the 20
steps (docs/benchmarks.md, "Golden loss"); RTOL leaves 50x that margin and is still far below what a real change
does (another seed moves the curve by more than 1e-2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_cli
from test_train import read_tb, torchrun

GOLDEN = Path(__file__).parent / "golden" / "debug_loss.json"
TAGS = ("train/loss", "train/play", "train/replay", "train/volume")
RTOL = 1e-5
# log every step; no samples (they draw from the global RNG only at sample steps, but cost time); threads pinned
ARGS = ("--config", "configs/debug.toml", "log.every=1", "log.sample_every=0", "run.threads=1")


def curves(run: Path) -> dict[str, list[float]]:
    acc = read_tb(run)
    out = {tag: [e.value for e in acc.Scalars(tag)] for tag in TAGS}
    out["val/loss"] = [e.value for e in acc.Scalars("val/loss")]
    return out


def run_debug(tiny_shards: Path, run: Path, ranks: int) -> dict[str, list[float]]:
    args = (*ARGS, f"data.dir={tiny_shards}", f"run.dir={run}")
    env = {"OMP_NUM_THREADS": "1"}
    res = torchrun(*args, nproc=2, env=env) if ranks == 2 else run_cli("-m", "deepj.train", *args, env_extra=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return curves(run)


def compare(got: dict[str, list[float]], want: dict[str, list[float]]) -> float:
    """Largest relative difference over all tags and steps; asserts the same steps were logged."""
    worst = 0.0
    for tag, ref in want.items():
        assert len(got[tag]) == len(ref), f"{tag}: {len(got[tag])} values, golden has {len(ref)}"
        for a, b in zip(got[tag], ref):
            worst = max(worst, abs(a - b) / max(abs(b), 1e-8))
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_debug_loss_curve_matches_golden(tiny_shards, tmp_path, ranks):
    got = run_debug(tiny_shards, tmp_path / "run", ranks)
    key = f"ranks={ranks}"
    if os.environ.get("DEEPJ_UPDATE_GOLDEN") == "1":
        table = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        table[key] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(table, indent=1) + "\n")
        pytest.skip(f"golden {key} rewritten")
    want = json.loads(GOLDEN.read_text())[key]
    assert len(want["train/loss"]) == 20  # every step of the debug config
    worst = compare(got, want)
    assert worst <= RTOL, f"{key}: loss curve differs from {GOLDEN.name} by {worst:.2e} relative (tolerance {RTOL})"


def test_golden_comparison_can_fail():
    """The comparison is not vacuous: a curve off by 1e-3 relative at one step is caught."""
    want = json.loads(GOLDEN.read_text())["ranks=1"]
    got = {k: list(v) for k, v in want.items()}
    assert compare(got, want) == 0.0
    got["train/loss"][7] *= 1.001
    assert compare(got, want) > RTOL
