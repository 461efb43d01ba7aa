"""Turn generated rolls into things to see and hear: piano-roll pictures and audio through FluidSynth.

Audio needs the `fluidsynth` program and a General MIDI soundfont (Debian: `apt-get install fluidsynth
fluid-soundfont-gm`; `make demo` installs them where it can). Without them, callers get images only and one warning.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from deepj.music.constants import PLAY, REPLAY, STEPS_PER_BAR, VOLUME

SOUNDFONT_PATHS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
)
SAMPLE_RATE = 22050


def roll_image(roll: np.ndarray, scale: int = 3) -> np.ndarray:
    """Roll (T, N, 3) -> RGB picture (H, W, 3) uint8: time runs right, pitch up; brightness = volume, onsets marked."""
    t_len, n = roll.shape[:2]
    img = np.full((n, t_len, 3), 250, dtype=np.uint8)
    play = roll[..., PLAY].T[::-1] > 0.5  # (N, T), highest pitch on the top row
    vol = roll[..., VOLUME].T[::-1]
    replay = roll[..., REPLAY].T[::-1] > 0.5
    prev = np.zeros_like(play)
    prev[:, 1:] = play[:, :-1]
    onset = play & (~prev | replay)
    shade = (200 - 170 * np.clip(vol, 0, 1)).astype(np.uint8)
    img[play] = np.stack([shade, shade, np.full_like(shade, 230)], -1)[play]
    img[onset] = (200, 40, 40)
    img[:, ::STEPS_PER_BAR][~play[:, ::STEPS_PER_BAR]] = (215, 215, 215)  # bar lines
    for c in range(0, n, 12):  # a faint line at every C (pitch index 0, 12, ... from the bottom)
        row = n - 1 - c
        img[row][~play[row]] = (235, 235, 200)
    return np.kron(img, np.ones((scale, scale, 1), dtype=np.uint8))


def save_png(roll: np.ndarray, path: str | Path, title: str = "", mark_step: int | None = None,
             shade: tuple[int, int] | None = None) -> Path:
    """The roll as a titled picture with bar numbers; `mark_step` draws a red line before that step (where a primer
    ends and the generated music begins), `shade` the steps [first, last) of a morph."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    img = roll_image(roll, scale=1)
    fig, ax = plt.subplots(figsize=(min(max(6, img.shape[1] / 60), 24), 3), dpi=120)  # 128 bars: 24 in
    ax.imshow(img, aspect="auto", interpolation="nearest")
    ax.set_xlabel("bar")
    ax.set_ylabel("pitch")
    bars = np.arange(0, img.shape[1], STEPS_PER_BAR)
    ax.set_xticks(bars, [str(b // STEPS_PER_BAR + 1) for b in bars], fontsize=6)
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if shade is not None:
        ax.axvspan(shade[0] - 0.5, shade[1] - 0.5, color="tab:green", alpha=0.12, lw=0)
        ax.text(shade[0], 1, "morph", color="tab:green", fontsize=7, va="top")
    if mark_step is not None:
        ax.axvline(mark_step - 0.5, color="tab:red", linewidth=1.5, linestyle="--")
        ax.text(mark_step + 1, img.shape[0] - 2, "primer ends", color="tab:red", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def find_soundfont() -> str | None:
    env = os.environ.get("DEEPJ_SOUNDFONT")
    if env and Path(env).is_file():
        return env
    return next((p for p in SOUNDFONT_PATHS if Path(p).is_file()), None)


def audio_available() -> tuple[bool, str]:
    """(True, "") if WAV rendering works here, else (False, what to install)."""
    if shutil.which("fluidsynth") is None:
        return False, "fluidsynth not found (apt-get install fluidsynth fluid-soundfont-gm)"
    if find_soundfont() is None:
        return False, "no General MIDI soundfont found (apt-get install fluid-soundfont-gm, or set DEEPJ_SOUNDFONT)"
    return True, ""


def render_wav(midi_path: str | Path, wav_path: str | Path, sample_rate: int = SAMPLE_RATE) -> Path:
    ok, why = audio_available()
    if not ok:
        raise RuntimeError(why)
    wav_path = Path(wav_path)
    cmd = ["fluidsynth", "-ni", "-g", "0.8", "-r", str(sample_rate), "-F", str(wav_path), find_soundfont(),
           str(midi_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0 or not wav_path.is_file():
        raise RuntimeError(f"fluidsynth failed on {midi_path}: {res.stderr.strip()[:300]}")
    return wav_path


def read_wav_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """WAV -> (samples float32 in [-1, 1], mono, shape (S,)), sample rate."""
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    dtype = {2: np.int16, 4: np.int32}[width]
    x = np.frombuffer(raw, dtype=dtype).astype(np.float32) / np.iinfo(dtype).max
    return x.reshape(-1, channels).mean(axis=1), rate
