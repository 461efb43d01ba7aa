"""Generation core: sample piano rolls from a trained DeepJ, step by step and note by note (the CLI lives elsewhere).

Per step t (beat = t % 16) the time axis turns the previous step's notes into one vector per note; then the notes are
sampled low -> high, each conditioned on the one just sampled below it:
- play ~ Bernoulli(sigmoid(play_logit / T)); if played, replay ~ Bernoulli(sigmoid(replay_logit / T)) and volume =
  the predicted value; if not played all three are 0. Replay is kept only where the note sounded at t-1 (a note
  struck after silence is a fresh onset, replay 0 by the representation's definition).
- The sampled [play, replay, volume] is the lower-neighbour input of the next note and part of the next step's
  previous notes.

Two ways to run the time axis (`SampleConfig.mode`):
- "stateful": carry the time-LSTM state from step to step: O(T) work for T steps.
- "window": the paper's code: for each new step re-run the time axis from a zero state over the last `window`
  previous steps (O(T * window)). The window is not padded with silent steps before the piece starts, so for
  steps <= window both modes compute the same thing and, for one seed, give the same roll (a test checks it).
The note axis carries the note-LSTM state from note to note within a step: O(N) per step, the same numbers as the
paper's code, which re-ran the note axis over all N notes to sample each note (O(N^2)).

Temperature applies to play and replay only. Silence rule, per piece of the batch (the original's, made per piece):
after `silence_bars` full bars of silence the temperature rises by `silence_step` with every further silent step;
any sounding step resets it to the base temperature. (The original started its silence counter at a full bar, so a
silent first step already raised T; we start at 0.)

In `play_only` models (BL2012) replay is 0 and volume is 1 where a note plays: the roll is the binary roll of those
benchmarks; whoever writes MIDI from it picks a velocity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from deepj.config import ConfigError
from deepj.constants import NUM_CHANNELS, PLAY, REPLAY, STEPS_PER_BAR, VOLUME
from deepj.model import DeepJ


@dataclass
class SampleConfig:
    steps: int = 512  # 32 bars
    temperature: float = 1.0
    mode: Literal["stateful", "window"] = "stateful"
    window: int = 128  # the paper's sliding window (mode="window")
    silence_bars: int = 1  # after a full bar of silence T rises by `silence_step` per further silent step
    silence_step: float = 0.1

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"sample.steps must be at least 1, got {self.steps}")
        if self.temperature <= 0:
            raise ConfigError(f"sample.temperature must be > 0, got {self.temperature}")
        if self.mode not in ("stateful", "window"):
            raise ConfigError(f"sample.mode must be 'stateful' or 'window', got {self.mode!r}")
        if self.window < 1:
            raise ConfigError(f"sample.window must be at least 1, got {self.window}")
        if self.silence_bars < 0 or self.silence_step < 0:
            raise ConfigError(f"sample.silence_bars={self.silence_bars} and sample.silence_step={self.silence_step}"
                              " must both be >= 0")


def silence_temperature(silent_steps: Tensor, cfg: SampleConfig) -> Tensor:
    """(B,) int: consecutive silent steps just generated, per piece -> (B,) float temperature for the next step.

    T = base + silence_step * max(0, silent_steps - silence_bars * 16): base during the first full silent bar(s),
    then one `silence_step` more per further silent step.
    """
    extra = (silent_steps - cfg.silence_bars * STEPS_PER_BAR).clamp(min=0)
    return cfg.temperature + cfg.silence_step * extra.to(torch.float32)


def _time_window(model: DeepJ, prevs: Tensor, t: int, window: int, style_emb: Tensor) -> Tensor:
    """The paper's sliding window: the time axis over previous steps max(0, t-window+1) .. t from a zero state.

    prevs: (B, steps+1, N, 3) with prevs[:, s] = the notes of step s-1 (zeros for s = 0). Returns (B, N, H).
    """
    lo = max(0, t - window + 1)
    prev = prevs[:, lo : t + 1]  # (B, W, N, 3)
    beat = (torch.arange(lo, t + 1, device=prev.device) % STEPS_PER_BAR).expand(prev.shape[0], -1)  # (B, W)
    h, _ = model.time_axis(model.time_features(prev, beat), style_emb)  # (B, W, N, H)
    return h[:, -1]  # (B, N, H): the output for step t


@torch.no_grad()
def generate(model: DeepJ, style: Tensor, cfg: SampleConfig, generator: torch.Generator) -> Tensor:
    """Sample B pieces at once. style: (B, S) one-hot or mixture. Returns the roll (B, steps, N, 3) float32 on CPU.

    Random numbers come only from `generator` (two uniforms per note and step, drawn on the generator's device), so
    one seed gives the same pieces, in either mode. The model is put in eval mode and restored afterwards.
    """
    mcfg = model.cfg
    if style.ndim != 2 or style.shape[1] != mcfg.num_styles:
        raise ValueError(
            f"deepj.sampling: style must be (batch, {mcfg.num_styles}) for this model, got {tuple(style.shape)}"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        b, n, steps = style.shape[0], mcfg.num_notes, cfg.steps
        style_emb = model.embed_style(style.to(device, torch.float32))  # (B, style_dim)
        # prevs[:, t] holds the notes of step t-1 (the model's `prev` input at step t); step t is written to [:, t+1].
        prevs = torch.zeros(b, steps + 1, n, NUM_CHANNELS, device=device)  # (B, steps+1, N, 3)
        silent = torch.zeros(b, dtype=torch.long, device=device)  # (B,) consecutive silent steps so far
        time_state = None
        for t in range(steps):
            prev_step = prevs[:, t]  # (B, N, 3)
            temp = silence_temperature(silent, cfg)  # (B,)
            if cfg.mode == "stateful":
                beat = torch.full((b,), t % STEPS_PER_BAR, dtype=torch.long, device=device)  # (B,)
                h, time_state = model.time_step(prev_step, beat, style_emb, time_state)  # (B, N, H)
            else:
                h = _time_window(model, prevs, t, cfg.window, style_emb)  # (B, N, H)
            u = torch.rand((b, n, 2), generator=generator, device=generator.device).to(device)  # (B, N, {play, replay})
            sounded_before = prev_step[..., PLAY] > 0.5  # (B, N): replay needs a note that sounded at t-1
            lower = torch.zeros(b, NUM_CHANNELS, device=device)  # (B, 3): below the lowest note
            note_state = None
            for i in range(n):
                out, note_state = model.note_step(h[:, i], lower, style_emb, note_state)  # (B, 3)
                out = out.float()
                play = (u[:, i, 0] < torch.sigmoid(out[:, PLAY] / temp)).float()  # (B,)
                if mcfg.play_only:
                    replay, volume = torch.zeros_like(play), play
                else:
                    struck = u[:, i, 1] < torch.sigmoid(out[:, REPLAY] / temp)
                    replay = (struck & sounded_before[:, i]).float() * play
                    volume = out[:, VOLUME].clamp(0.0, 1.0) * play  # clamp: a linear volume head may leave [0, 1]
                lower = torch.stack([play, replay, volume], dim=-1)  # (B, 3): the next note's lower neighbour
                prevs[:, t + 1, i] = lower
            sounding = (prevs[:, t + 1, :, PLAY] > 0.5).any(dim=-1)  # (B,)
            silent = torch.where(sounding, torch.zeros_like(silent), silent + 1)
        return prevs[:, 1:].float().cpu()  # (B, steps, N, 3)
    finally:
        model.train(was_training)
