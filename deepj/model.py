"""DeepJ (Mao, Shin & Cottrell, ICSC 2018): the style-conditioned biaxial LSTM. `ModelConfig` and the module only.

The architecture is the one in docs/design.md#the-model, read from the authors' Keras code (calclavia/DeepJ,
branch `icsc`), with these decisions:
- the same-pitch-class count is computed correctly (the original's reshape scrambled batch, time and pitch);
- the volume head is a sigmoid when `bounded_volume` (the original's was linear, so volumes could leave [0, 1]);
- play and replay are returned as LOGITS (the loss uses BCE-with-logits, stable under fp16/bf16);
- PyTorch LSTMs carry two bias vectors (b_ih and b_hh) where Keras has one: 4*H more parameters per layer;
- `play_only` (BL2012 benchmark mode) zeroes the replay and volume channels of every input (previous notes and the
  lower neighbour's target), so the model only ever sees play; its replay/volume outputs are then untrained and the
  loss ignores them. The layer sizes stay the same, so checkpoints of both modes share one shape.

Per note and step the time axis sees 94 features (order: pitch position 1, pitch class one-hot 12, count of sounding
notes of the same pitch class at t-1 1, convolution over the previous step's notes 64, beat one-hot 16). The pitch
class is `n % 12` of the note index; with a range not starting on a C this is a fixed rotation of the true pitch class,
which the learned weights absorb (the count groups the same notes either way).

Two paths give the same numbers (tests/test_model.py checks it): `forward` runs whole sequences through cuDNN-friendly
`nn.LSTM` calls (no Python loop over time or notes), and the step API (`time_step`, `note_step`) advances one step /
one note at a time for generation (deepj/sampling.py). Both are thin wrappers of `time_axis` and `note_axis`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepj.config import ConfigError
from deepj.music.constants import NUM_CHANNELS, PITCH_CLASSES, PLAY, STEPS_PER_BAR

# One (h, c) pair per LSTM layer, each (1, batch, hidden): the state nn.LSTM takes and returns.
LSTMState = list[tuple[Tensor, Tensor]]


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """`F.dropout`, with masks drawn from 16-bit random integers on CPU.

    On CPU, `F.dropout` draws one Bernoulli per element, a large share of a training step of the demo model (10 masks
    over (B, T, N, F) tensors per pass); four 16-bit draws per 64-bit random integer cost far less (measured:
    docs/benchmarks.md, training step on CPU). The drop rate becomes round(p * 65536) / 65536 (within 1e-5 of p) and
    the kept values are scaled by the exact inverse of the keep rate, so the expectation is unchanged. Other devices
    use `F.dropout`.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # uniform over all 64 bits
    cut = round(p * 65536)  # drop the `cut` smallest of the 65536 int16 values
    keep = bits.view(torch.int16)[:n].view(x.shape) >= cut - 32768
    return x * (keep.to(x.dtype) * (65536 / (65536 - cut)))  # one pass over x, forward and backward


@dataclass
class ModelConfig:
    num_notes: int = 48  # N, filled from the data's pitch range by training
    num_styles: int = 1  # S, filled from the manifest's style vocabulary by training
    style_dim: int = 64
    conv_filters: int = 64
    conv_kernel: int = 24  # two octaves, 'same' padding along the note axis (Keras/TF convention, see NoteConv)
    time_hidden: int = 256
    time_layers: int = 2
    note_hidden: int = 128
    note_layers: int = 2
    dropout: float = 0.5  # after the conv, each style projection and each LSTM layer
    input_dropout: float = 0.2  # previous notes, beat, lower-neighbour targets
    # The lower neighbour's target on the note axis; None = input_dropout (the paper's). A dropped target hides a played
    # note from every note above it, so the note axis learns to under-play above "nothing below" (docs/benchmarks.md).
    lower_dropout: float | None = None
    bounded_volume: bool = True  # sigmoid volume head (the original's was linear)
    play_only: bool = False  # BL2012 benchmark mode: only the play channel is modelled/used (replay, volume ignored)

    def __post_init__(self) -> None:
        for name in ("num_notes", "num_styles", "style_dim", "conv_filters", "conv_kernel", "time_hidden",
                     "time_layers", "note_hidden", "note_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("dropout", "input_dropout", "lower_dropout"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must lie in [0, 1), got {getattr(self, name)}")

    @property
    def num_features(self) -> int:
        """Width of the time axis's input per note: position + pitch class + same-class count + conv + beat."""
        return 1 + PITCH_CLASSES + 1 + self.conv_filters + STEPS_PER_BAR


class DeepJ(nn.Module):
    # Dropout masks in training: True = `dropout` above (16-bit masks on CPU, `F.dropout` elsewhere); False =
    # `F.dropout` everywhere. A class attribute; set it on an instance to change one model (deepj.bench step does).
    cpu_dropout: bool = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        n, k = cfg.num_notes, cfg.conv_kernel
        # Keras/TF 'same' padding: total k - 1, the smaller half before. Along the note axis "before" means lower
        # notes: for k = 24 a note sees 11 notes below and 12 above it (of the previous step).
        self.conv_pad = ((k - 1) // 2, k // 2)
        self.conv = nn.Conv1d(NUM_CHANNELS, cfg.conv_filters, k)
        self.style_embed = nn.Linear(cfg.num_styles, cfg.style_dim)  # no activation, no dropout (as the original)

        time_in = [cfg.num_features] + [cfg.time_hidden] * (cfg.time_layers - 1)
        note_in = [cfg.time_hidden + NUM_CHANNELS] + [cfg.note_hidden] * (cfg.note_layers - 1)
        # Separate single-layer LSTMs so that each layer gets its own style projection added to its input.
        self.time_style = nn.ModuleList(nn.Linear(cfg.style_dim, w) for w in time_in)
        self.time_lstm = nn.ModuleList(nn.LSTM(w, cfg.time_hidden, batch_first=True) for w in time_in)
        self.note_style = nn.ModuleList(nn.Linear(cfg.style_dim, w) for w in note_in)
        self.note_lstm = nn.ModuleList(nn.LSTM(w, cfg.note_hidden, batch_first=True) for w in note_in)
        self.head = nn.Linear(cfg.note_hidden, NUM_CHANNELS)  # play logit, replay logit, volume (pre-activation)

        # Constant per-note features; buffers so they follow .to(device) but are not saved (derivable from cfg).
        idx = torch.arange(n)
        self.register_buffer("pitch_pos", idx.float() / n, persistent=False)  # (N,)
        self.register_buffer("pitch_class", idx % PITCH_CLASSES, persistent=False)  # (N,) int64
        # Multiplies the 3 input channels: play only in BL2012 mode, all three otherwise.
        keep = torch.tensor([1.0, 0.0, 0.0]) if cfg.play_only else torch.ones(NUM_CHANNELS)
        self.register_buffer("channel_keep", keep, persistent=False)  # (3,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras 2 defaults, which the original trained with: Glorot-uniform kernels, orthogonal recurrent weights,
        zero biases except the LSTM forget gate's (1, Keras' `unit_forget_bias`)."""
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Conv1d)):
                nn.init.xavier_uniform_(mod.weight)
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.LSTM):
                h = mod.hidden_size
                nn.init.xavier_uniform_(mod.weight_ih_l0)
                nn.init.orthogonal_(mod.weight_hh_l0)
                nn.init.zeros_(mod.bias_ih_l0)
                nn.init.zeros_(mod.bias_hh_l0)
                with torch.no_grad():
                    mod.bias_ih_l0[h : 2 * h].fill_(1.0)  # PyTorch gate order: input, forget, cell, output

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _dropout(self, x: Tensor, p: float) -> Tensor:
        """Dropout at rate p in training mode, by the kind `cpu_dropout` chooses; the identity in eval mode."""
        return dropout(x, p, self.training) if self.cpu_dropout else F.dropout(x, p, self.training)

    # ---------------------------------------------------------------- time axis
    def embed_style(self, style: Tensor) -> Tensor:
        """(B, S) one-hot or mixture over the style slots -> (B, style_dim)."""
        return self.style_embed(style)

    def pitch_class_count(self, play: Tensor) -> Tensor:
        """(B, T, N) play of the previous step -> (B, T, N): notes sounding in each note's pitch class (itself too)."""
        b, t, n = play.shape
        octaves = -(-n // PITCH_CLASSES)
        padded = F.pad(play, (0, octaves * PITCH_CLASSES - n))  # (B, T, O*12): silent notes above the range
        per_class = padded.view(b, t, octaves, PITCH_CLASSES).sum(2)  # (B, T, 12): note n is in column n % 12
        return per_class[..., self.pitch_class]  # (B, T, N)

    def time_features(self, prev: Tensor, beat: Tensor) -> Tensor:
        """Inputs of the time axis.

        prev: (B, T, N, 3) the previous step's [play, replay, volume] for each step (teacher forcing);
        beat: (B, T) int64 in [0, 16). Returns (B, T, N, 94) with the default config.
        """
        cfg = self.cfg
        b, t, n, _ = prev.shape
        if n != cfg.num_notes:
            raise ValueError(f"deepj.model: input has {n} notes, the model has model.num_notes={cfg.num_notes}")
        prev = self._dropout(prev * self.channel_keep.to(prev.dtype), cfg.input_dropout)  # (B, T, N, 3)
        beat_1h = F.one_hot(beat, STEPS_PER_BAR).to(prev.dtype)  # (B, T, 16)
        beat_1h = self._dropout(beat_1h, cfg.input_dropout)

        x = prev.reshape(b * t, n, NUM_CHANNELS).transpose(1, 2)  # (B*T, 3, N): channels first for Conv1d
        x = self.conv(F.pad(x, self.conv_pad))  # (B*T, filters, N)
        conv = x.transpose(1, 2).reshape(b, t, n, cfg.conv_filters)  # (B, T, N, filters)
        conv = self._dropout(torch.tanh(conv), cfg.dropout)
        dtype = conv.dtype  # under autocast the conv may run in bf16/fp16; build the rest in the same dtype

        pos = self.pitch_pos.to(dtype).view(1, 1, n, 1).expand(b, t, n, 1)  # (B, T, N, 1)
        pclass = F.one_hot(self.pitch_class, PITCH_CLASSES).to(dtype).expand(b, t, n, PITCH_CLASSES)  # (B, T, N, 12)
        count = self.pitch_class_count(prev[..., PLAY]).unsqueeze(-1).to(dtype)  # (B, T, N, 1)
        beat_n = beat_1h.to(dtype).unsqueeze(2).expand(b, t, n, STEPS_PER_BAR)  # (B, T, N, 16)
        return torch.cat([pos, pclass, count, conv, beat_n], dim=-1)  # (B, T, N, 94)

    def time_axis(self, x: Tensor, style_emb: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """Time-axis LSTMs, weights shared over notes (each note is one sequence).

        x: (B, T, N, F) from `time_features`; style_emb: (B, style_dim); state: per layer (h, c) of (1, B*N, H) or None
        (zeros). Returns (B, T, N, time_hidden) and the state after the last step.
        """
        b, t, n, f = x.shape
        x = x.transpose(1, 2).reshape(b * n, t, f)  # (B*N, T, F): one sequence per (piece, note)
        new_state: LSTMState = []
        for layer, (proj, lstm) in enumerate(zip(self.time_style, self.time_lstm)):
            width = x.shape[-1]
            s = torch.tanh(proj(style_emb)).view(b, 1, 1, width)  # (B, 1, 1, F_l): broadcast over notes and time
            # Dropout after the broadcast, as the original (Dense -> RepeatVector -> tanh -> Dropout): a fresh mask per
            # note and step. In eval mode this stays a broadcast view.
            s = self._dropout(s.expand(b, n, t, width), self.cfg.dropout)  # (B, N, T, F_l)
            x = x + s.reshape(b * n, t, width)  # (B*N, T, F_l)
            x, st = lstm(x, None if state is None else state[layer])  # (B*N, T, H)
            new_state.append(st)
            x = self._dropout(x, self.cfg.dropout)
        return x.view(b, n, t, -1).transpose(1, 2), new_state  # (B, T, N, H)

    def time_step(
        self, prev_step: Tensor, beat: Tensor, style_emb: Tensor, state: LSTMState | None
    ) -> tuple[Tensor, LSTMState]:
        """One step of the time axis: prev_step (B, N, 3), beat (B,) -> (B, N, time_hidden), carried state."""
        x = self.time_features(prev_step.unsqueeze(1), beat.unsqueeze(1))  # (B, 1, N, F)
        h, state = self.time_axis(x, style_emb, state)  # (B, 1, N, H)
        return h[:, 0], state  # (B, N, H)

    # ---------------------------------------------------------------- note axis
    def note_axis(
        self, h: Tensor, lower: Tensor, style_emb: Tensor, state: LSTMState | None = None
    ) -> tuple[Tensor, LSTMState]:
        """Note-axis LSTMs over notes low -> high, weights shared over time, and the heads.

        h: (B, T, N, time_hidden) time-axis output; lower: (B, T, N, 3) the target of the note just below each note
        (zeros for the lowest); state: per layer (h, c) of (1, B*T, note_hidden) or None. Returns (B, T, N, 3) =
        [play logit, replay logit, volume] and the state after the last note.
        """
        cfg = self.cfg
        b, t, n, _ = h.shape
        p_lower = cfg.input_dropout if cfg.lower_dropout is None else cfg.lower_dropout
        lower = self._dropout(lower * self.channel_keep.to(lower.dtype), p_lower)  # (B, T, N, 3)
        x = torch.cat([h, lower.to(h.dtype)], dim=-1).reshape(b * t, n, -1)  # (B*T, N, H_time + 3): a sequence per step
        new_state: LSTMState = []
        for layer, (proj, lstm) in enumerate(zip(self.note_style, self.note_lstm)):
            width = x.shape[-1]
            s = torch.tanh(proj(style_emb)).view(b, 1, 1, width)  # (B, 1, 1, F_l): broadcast over time and notes
            s = self._dropout(s.expand(b, t, n, width), cfg.dropout)  # (B, T, N, F_l)
            x = x + s.reshape(b * t, n, width)  # (B*T, N, F_l)
            x, st = lstm(x, None if state is None else state[layer])  # (B*T, N, H_note)
            new_state.append(st)
            x = self._dropout(x, cfg.dropout)
        out = self.head(x).view(b, t, n, NUM_CHANNELS)  # (B, T, N, 3)
        if cfg.bounded_volume:
            out = torch.cat([out[..., :2], torch.sigmoid(out[..., 2:])], dim=-1)
        return out, new_state

    def note_step(
        self, h_note: Tensor, lower: Tensor, style_emb: Tensor, state: LSTMState | None
    ) -> tuple[Tensor, LSTMState]:
        """One note of the note axis: h_note (B, time_hidden), lower (B, 3) -> (B, 3) outputs, carried state."""
        out, state = self.note_axis(h_note[:, None, None], lower[:, None, None], style_emb, state)  # (B, 1, 1, 3)
        return out[:, 0, 0], state  # (B, 3)

    # ---------------------------------------------------------------- training path
    def forward(self, prev: Tensor, target: Tensor, beat: Tensor, style: Tensor) -> Tensor:
        """Teacher-forced pass over whole sequences.

        prev: (B, T, N, 3) [play, replay, volume] of step t-1 for each step t; target: (B, T, N, 3) of step t (only
        the lower neighbours' values are used as inputs); beat: (B, T) int64 in [0, 16); style: (B, S) one-hot or
        mixture. Returns (B, T, N, 3): play logit, replay logit, volume (in [0, 1] when `bounded_volume`).
        """
        style_emb = self.embed_style(style)  # (B, style_dim)
        h, _ = self.time_axis(self.time_features(prev, beat), style_emb)  # (B, T, N, time_hidden)
        lower = F.pad(target[:, :, :-1], (0, 0, 1, 0))  # (B, T, N, 3): note n gets target n-1, the lowest zeros
        out, _ = self.note_axis(h, lower, style_emb)  # (B, T, N, 3)
        return out
