"""Generated samples in TensorBoard during training: one piece per top-level style, as a piano-roll image and audio."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from deepj.constants import STEPS_PER_BAR
from deepj.metrics import RunLogger, warn0
from deepj.midi_io import write_midi
from deepj.render import audio_available, read_wav_mono, render_wav, roll_image
from deepj.representation import ReprConfig, roll_to_notes
from deepj.sampling import SampleConfig, generate
from deepj.styles import style_vector, top_level_names

_warned_audio = False


def log_samples(model, manifest: dict, logger: RunLogger, step: int, bars: int, seed: int) -> None:
    """Rank 0 only. The same seed every time, so the pictures show the model changing, not the dice."""
    global _warned_audio
    names = top_level_names(manifest["styles"], manifest["levels"])
    style = torch.stack([style_vector([n], manifest["styles"], manifest["levels"]) for n in names])  # (B, S)
    gen = torch.Generator().manual_seed(seed)
    roll = generate(model, style, SampleConfig(steps=bars * STEPS_PER_BAR), gen).numpy()  # (B, T, N, 3)
    ok, why = audio_available()
    if not ok and not _warned_audio:
        warn0(f"samples are images only: {why}")
        _warned_audio = True
    cfg = ReprConfig(**{k: manifest["representation"][k] for k in ("min_pitch", "max_pitch")})
    for name, r in zip(names, roll):
        logger.image(f"samples/{name}", roll_image(r), step)
        if ok:
            with tempfile.TemporaryDirectory() as tmp:
                mid = write_midi(roll_to_notes(r, cfg), Path(tmp) / "s.mid")
                samples, rate = read_wav_mono(render_wav(mid, Path(tmp) / "s.wav"))
                logger.audio(f"samples/{name}", torch.from_numpy(samples), step, sample_rate=rate)
