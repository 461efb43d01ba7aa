"""DeepJ's loss, and the play-only likelihood of the BL2012 benchmarks.

`deepj_loss` = BCE(play) + BCE(replay, masked) + MSE(volume, masked), weights 1:1:1 (docs/design.md#the-loss), where
"masked" means only note-steps whose target play is 1 contribute.

**Decision (normalisation):** the play term is averaged over all note-steps; the masked replay and volume terms are
averaged, in each window, over that window's *played* note-steps, and then over the windows of the batch. The original
averaged the masked terms over all notes, which weighted them by note density (about 10% of note-steps sound, so replay
and volume counted about a tenth as much as play). A window with no played note contributes 0 to them (no NaN).

Per-window normalisation keeps the loss a plain mean over windows, so splitting a global batch into micro-batches and
ranks (accumulation, DDP) gives exactly the gradient of the whole batch — a batch-wide played count would not
(tests/test_train.py checks it with windows of very different density).

Everything is computed in float32 from logits (`binary_cross_entropy_with_logits`), so the loss is stable when the
model ran under fp16/bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deepj.music.constants import PLAY, REPLAY, VOLUME


def deepj_loss(out: Tensor, target: Tensor, play_only: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """out: (B, T, N, 3) model output [play logit, replay logit, volume]; target: (B, T, N, 3) [play, replay, volume].

    Returns (total, parts): the scalar to back-propagate and its detached parts {"play", "replay", "volume"} (only
    {"play"} when `play_only`, where total is the play term alone).
    """
    if out.shape != target.shape:
        raise ValueError(f"deepj.training.loss: output shape {tuple(out.shape)} != target shape {tuple(target.shape)}")
    # fp16/bf16 outputs are upcast; float64 (the gradient-equivalence tests) stays float64.
    dtype = torch.float64 if out.dtype == torch.float64 else torch.float32
    out, target = out.to(dtype), target.to(dtype)
    play_t = target[..., PLAY]  # (B, T, N)
    play = F.binary_cross_entropy_with_logits(out[..., PLAY], play_t)  # mean over all note-steps
    if play_only:
        return play, {"play": play.detach()}

    mask = (play_t > 0.5).float()  # (B, T, N): note-steps that sound in the target
    dims = tuple(range(1, mask.ndim))  # all but the batch (window) dimension
    played = mask.sum(dims).clamp(min=1.0)  # (B,) guard: a silent window's masked sums are 0, divided by 1
    replay_el = F.binary_cross_entropy_with_logits(out[..., REPLAY], target[..., REPLAY], reduction="none")
    replay = ((replay_el * mask).sum(dims) / played).mean()
    volume = (((out[..., VOLUME] - target[..., VOLUME]).square() * mask).sum(dims) / played).mean()
    total = play + replay + volume
    return total, {"play": play.detach(), "replay": replay.detach(), "volume": volume.detach()}


def play_nll_sum(out: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of the play channel in the BL2012 convention: BCE summed over the notes of a frame.

    out/target: (B, T, N, 3) (or (..., N, 3)). `reduction="mean"`: nats per frame (sum over notes, mean over frames);
    `"sum"`: total nats over all frames, to accumulate over batches and divide by the total frame count.
    """
    nll = F.binary_cross_entropy_with_logits(out[..., PLAY].float(), target[..., PLAY].float(), reduction="none")
    per_frame = nll.sum(-1)  # (..., ) one value per frame
    if reduction == "mean":
        return per_frame.mean()
    if reduction == "sum":
        return per_frame.sum()
    raise ValueError(f"deepj.training.loss.play_nll_sum: reduction must be 'mean' or 'sum', got {reduction!r}")
