"""Generated samples in TensorBoard during training: one piece per top-level style, as a piano-roll image and audio."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

from deepj.music.constants import STEPS_PER_BAR
from deepj.music.midi_io import write_midi
from deepj.music.render import audio_available, read_wav_mono, render_wav, roll_image
from deepj.music.representation import ReprConfig, roll_to_notes
from deepj.music.styles import StyleTree
from deepj.sampling import SampleConfig, generate
from deepj.training.logger import RunLogger, warn0

_warned_audio = False


def log_samples(model: nn.Module, styles: StyleTree, representation: ReprConfig, logger: RunLogger, step: int,
                bars: int, seed: int) -> None:
    """Rank 0 only. The same seed every time, so the pictures show the model changing, not the dice."""
    global _warned_audio
    if next(model.parameters()).dtype != torch.float32:
        # DeepSpeed's bf16/fp16 modes cast the module itself; the sampler runs in float32, so sample from a float32
        # copy of the weights (the model is small) rather than feed float32 inputs to 16-bit layers.
        model = copy.deepcopy(model).float()
    names = styles.top_level()
    style = torch.stack([styles.vector([n]) for n in names])  # (B, S)
    gen = torch.Generator().manual_seed(seed)
    roll = generate(model, style, SampleConfig(steps=bars * STEPS_PER_BAR), gen).numpy()  # (B, T, N, 3)
    ok, why = audio_available()
    if not ok and not _warned_audio:
        warn0(f"samples are images only: {why}")
        _warned_audio = True
    for name, r in zip(names, roll):
        logger.image(f"samples/{name}", roll_image(r), step)
        if ok:
            with tempfile.TemporaryDirectory() as tmp:
                mid = write_midi(roll_to_notes(r, representation), Path(tmp) / "s.mid")
                samples, rate = read_wav_mono(render_wav(mid, Path(tmp) / "s.wav"))
                logger.audio(f"samples/{name}", torch.from_numpy(samples), step, sample_rate=rate)
