"""BL2012 scoring: the literature's negative log-likelihood in nats per frame, and the check that it is exact.

The figure is the Bernoulli NLL of the play logits summed over all 88 keys, averaged over every frame of every piece,
each frame counted once. A piece is run whole (teacher forcing from a zero LSTM state), so every frame is scored with
its full history; its first frame is predicted from an all-zero previous frame. Some published evaluation loops
predict frame t+1 from frames up to t and never score a piece's first frame, so the figure without first frames is
given beside it.

Exactness: the time axis must see only earlier frames and the note axis only the notes below in the same frame.
`step_path_nll` scores a piece the way generation runs the model (one frame of the time axis, then one note at a time
with the true lower note fed in); it equals the whole-piece forward pass only if nothing looks ahead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from deepj.bench.bl2012_data import NUM_KEYS, make_batch
from deepj.model import DeepJ
from deepj.music.constants import NUM_CHANNELS, PLAY


@dataclass(frozen=True)
class Score:
    """NLL in nats per frame over a set of whole pieces."""

    nll: float  # every frame
    nll_after_first: float  # every frame but each piece's first (nan when every piece is one frame long)
    frames: int
    pieces: int


def frame_nll(model: DeepJ, batch: dict) -> torch.Tensor:
    """(B, L) play NLL per frame, summed over the 88 keys, zero on padding."""
    out = model(batch["prev"], batch["target"], batch["beat"], batch["style"])  # (B, L, 88, 3)
    nll = F.binary_cross_entropy_with_logits(out[..., PLAY].float(), batch["target"][..., PLAY], reduction="none")
    return nll.sum(-1) * batch["mask"]  # (B, L)


@torch.no_grad()
def evaluate_pieces(model: DeepJ, pieces: list[np.ndarray], beat_period: int, frame_budget: int = 4096) -> Score:
    """Whole pieces, teacher-forced from a zero state, in fp32 (whatever precision training used)."""
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i]))
    total, first, frames, j = 0.0, 0.0, 0, 0
    while j < len(order):  # longest first; a batch holds as many pieces as fit in frame_budget padded frames
        longest = len(pieces[order[j]])
        size = max(1, frame_budget // longest)
        group = order[j: j + size]
        j += len(group)
        batch = make_batch(pieces, [(i, 0, len(pieces[i]), 0) for i in group], beat_period)
        batch = {k: v.to(device) for k, v in batch.items()}
        nll = frame_nll(model, batch).double()  # (B, L)
        total += float(nll.sum())
        first += float(nll[:, 0].sum())
        frames += sum(len(pieces[i]) for i in group)
    model.train(was_training)
    after = frames - len(pieces)
    return Score(nll=total / frames, nll_after_first=(total - first) / after if after else float("nan"),
                 frames=frames, pieces=len(pieces))


@torch.no_grad()
def step_path_nll(model: DeepJ, roll: np.ndarray, beat_period: int) -> float:
    """Nats per frame of `roll` (frames, 88) scored one frame and one note at a time, as generation runs the model."""
    was_training = model.training
    model.eval()
    style_emb = model.embed_style(torch.ones(1, 1))  # (1, style_dim)
    target = torch.zeros(len(roll), NUM_KEYS, NUM_CHANNELS)  # (F, 88, 3): [play, 0, 0]
    target[..., PLAY] = torch.from_numpy(roll.astype(np.float32))
    prev, state, total = torch.zeros(1, NUM_KEYS, NUM_CHANNELS), None, 0.0
    for t in range(len(roll)):
        h, state = model.time_step(prev, torch.tensor([t % beat_period]), style_emb, state)  # (1, 88, H)
        lower, note_state = torch.zeros(1, NUM_CHANNELS), None
        for n in range(NUM_KEYS):
            out, note_state = model.note_step(h[:, n], lower, style_emb, note_state)  # (1, 3)
            total += float(F.binary_cross_entropy_with_logits(out[0, PLAY].double(), target[t, n, PLAY].double()))
            lower = target[t, n][None]  # the true note, fed to the note above
        prev = target[t][None]
    model.train(was_training)
    return total / len(roll)


def paths_agree(forward: float, stepped: float) -> bool:
    """The step-by-step and forward scores agree to float32 accuracy over a few thousand note steps."""
    return math.isclose(forward, stepped, rel_tol=1e-5, abs_tol=1e-5)
