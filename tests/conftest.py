"""Shared fixtures: a tiny real corpus (MIDI files in a period/composer tree) and its shards, made once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# The BL2012 .mat files live in the shared data folder beside the repository; a clone elsewhere finds them through
# $DEEPJ_BL2012_DIR or the project's fixed location.
_BL2012_CANDIDATES = [Path(os.environ["DEEPJ_BL2012_DIR"])] if os.environ.get("DEEPJ_BL2012_DIR") else []
_BL2012_CANDIDATES += [REPO.parent / "shared" / "data" / "bl2012", Path("/work/shared/data/bl2012")]
BL2012_DIR = next((d for d in _BL2012_CANDIDATES if (d / "JSB_Chorales.mat").is_file()), _BL2012_CANDIDATES[0])
needs_bl2012 = pytest.mark.skipif(not (BL2012_DIR / "JSB_Chorales.mat").is_file(),
                                  reason=f"BL2012 data not found in {BL2012_DIR}")


def write_random_piece(path: Path, rng: np.random.Generator, bars: int, low: int, high: int, tempo: float = 120.0):
    """A small real MIDI file: a seeded random walk of chords and a melody, two tracks."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    sec_per_step = 60.0 / tempo / 4
    for _voice in range(2):
        inst = pretty_midi.Instrument(program=0)
        t, pitch = 0, int(rng.integers(low, high))
        while t < bars * 16:
            dur = int(rng.choice([1, 2, 2, 4, 4, 8]))
            pitch = int(np.clip(pitch + rng.integers(-4, 5), low, high - 1))
            inst.notes.append(pretty_midi.Note(int(rng.integers(40, 120)), pitch, t * sec_per_step,
                                               (t + dur) * sec_per_step))
            t += dur
        pm.instruments.append(inst)
    path.parent.mkdir(parents=True, exist_ok=True)
    pm.write(str(path))


def make_tiny_corpus(root: Path, pieces_per_style: int = 6, bars: int = 6) -> Path:
    """Two periods, three composers, with different registers so that a style is learnable."""
    rng = np.random.default_rng(0)
    styles = {"baroque/bach": (40, 60), "baroque/handel": (44, 64), "classical/mozart": (60, 80)}
    for style, (low, high) in styles.items():
        for i in range(pieces_per_style):
            write_random_piece(root / style / f"piece{i:02d}.mid", rng, bars, low, high)
    return root


def run_cli(*args: str, timeout: int = 600, env_extra: dict | None = None, check: bool = False):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    res = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {res.returncode}\nstdout:\n{res.stdout[-4000:]}"
                             f"\nstderr:\n{res.stderr[-4000:]}")
    return res


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use tiny tensors: one intra-op thread avoids spin-wait stalls when other test processes share the cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """A preprocessed tiny corpus, made once per test session with the real CLI."""
    base = tmp_path_factory.mktemp("tiny")
    midi = make_tiny_corpus(base / "midi")
    out = base / "shards"
    run_cli("-m", "deepj.preprocess", str(midi), str(out), "--workers", "1", "--val-fraction", "0.2",
            "--min-steps", "16", check=True)
    return out


@pytest.fixture(scope="session")
def trained_run(tiny_shards, tmp_path_factory) -> Path:
    """A debug run of 4 steps on tiny_shards with its final checkpoint, trained once per test session."""
    run = tmp_path_factory.mktemp("trained") / "run"
    run_cli("-m", "deepj.train", "--config", "configs/debug.toml", f"data.dir={tiny_shards}", f"run.dir={run}",
            "train.max_steps=4", "checkpoint.every=4", "log.sample_every=0", "train.val_every=0", check=True)
    return run
