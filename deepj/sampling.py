"""Generation core: sample piano rolls from a trained DeepJ, step by step and note by note (the CLI lives elsewhere).

Per step t (beat = t % 16) the time axis turns the previous step's notes into one vector per note; then the notes are
sampled low -> high, each conditioned on the one just sampled below it:
- play ~ Bernoulli(sigmoid(play_logit / T)); if played, replay ~ Bernoulli(sigmoid(replay_logit / T)) and volume =
  the predicted value; if not played all three are 0. Replay is kept only where the note sounded at t-1 (a note
  struck after silence is a fresh onset, replay 0 by the representation's definition).
- The sampled [play, replay, volume] is the lower-neighbour input of the next note and part of the next step's
  previous notes.

Three ways to run the model (`SampleConfig.mode`); for one seed all three give the same roll for steps <= window (they
draw the same random numbers in the same order; tests/test_sampling.py checks it):
- "stateful": carry the time-LSTM state from step to step and the note-LSTM state from note to note: one time-axis
  step and N note-axis steps per generated step. On CUDA (`cuda_graph`, default on) one whole generated step (time
  step, the N-note loop, sampling, silence counter) is captured once as a CUDA graph and replayed for every step:
  eagerly a step is N times a handful of tiny kernels, so kernel launches, not arithmetic, set the speed.
- "window": for each new step re-run the time axis from a zero state over the last `window` previous steps, as the
  paper's code did (O(T * window)); the note axis is stateful as above. The window is not padded with silent steps
  before the piece starts, so for steps <= window it sees exactly what "stateful" carries.
- "paper": exactly the paper's code: the time axis as "window", and for each note i the note axis re-run from a zero
  state over all N notes, the notes not yet sampled (above i) zero, taking output i: O(N^2) note work per step. The
  note axis is causal low -> high, so output i is that of the stateful loop (the zeros above i never reach it).
"window" and "paper" exist to measure what carrying the state saves (python -m deepj.bench generate).

Temperature applies to play and replay only. Silence rule, per piece of the batch (the original's, made per piece):
after `silence_bars` full bars of silence the temperature rises by `silence_step` with every further silent step;
any sounding step resets it to the base temperature. (The original started its silence counter at a full bar, so a
silent first step already raised T; we start at 0.)

Silence redraws (`silence_redraws` = K; not in the paper's code): a step that would begin a silence (nothing has
sounded yet, or the step before sounded) is drawn 1 + K times from the same model outputs with fresh uniforms, and each
piece keeps its first draw that sounds (its first draw if none does). So a silence begins only where the model draws
one 1 + K times running (p^(1+K) for a step silent with p); a silence that has begun is not redrawn, so the model
still decides how long a rest lasts, and the silence rule above still ends long ones. Why: real pieces start with
their first note and seldom fall silent (0.2-1.6% of the demo corpus's steps), while from silence and from its own
samples the demo model begins silences far more often and stays in them (docs/benchmarks.md). K = 0 is the paper's
sampler. The draws run as one batch of (1 + K) * B pieces, so a step costs about 1 + K times the note-axis work.

In `play_only` models (BL2012) replay is 0 and volume is 1 where a note plays: the roll is the binary roll of those
benchmarks; whoever writes MIDI from it picks a velocity.

A primer (a roll of P steps, e.g. a user's MIDI file) is the piece's first P steps, fed to the model as its previous
steps (teacher forcing); the generated steps follow it, step t at beat (P + t) % 16. "stateful" runs the time axis
over the primer once, P `time_step` calls from a zero state, the very calls that generating those steps would have
made, so the state it carries on is exactly that of stepping through the primer (the silence counter and "started"
flag too: a primer that ends in sound leaves no silence); "window" and "paper" hold the primer as their first previous
steps, so their windows look back into it. All three stay equal within one window.

A style that changes over the piece (a morph: `style` of shape (B, steps, S)) is embedded anew at each step where it
changes and read there by every axis: "stateful" copies the embedding into the static buffer the step (and its CUDA
graph) reads; "window" and "paper" re-run their window step by step, each past step with its own style, as the
original's per-step style input did (`time_axis` takes one style per call: `window` time steps per generated step, slow,
but these modes are for measuring). Primer steps get the style of generated step 0.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from deepj.config import finite, require
from deepj.model import DeepJ, LSTMState
from deepj.music.constants import NUM_CHANNELS, PLAY, REPLAY, STEPS_PER_BAR, VOLUME

MODES = ("stateful", "window", "paper")
GRAPH_WARMUP_STEPS = 3  # eager runs on the capture stream before capture (cuDNN/cuBLAS handles, workspaces)
PROGRESS_EVERY = 4  # generated steps (a beat) between calls of `generate`'s progress callback


@dataclass
class SampleConfig:
    steps: int = 512  # 32 bars
    temperature: float = 1.0
    mode: Literal["stateful", "window", "paper"] = "stateful"
    window: int = 128  # the paper's sliding window (modes "window" and "paper")
    silence_bars: int = 1  # after a full bar of silence T rises by `silence_step` per further silent step
    silence_step: float = 0.1
    silence_redraws: int = 8  # a step that would begin a silence is drawn up to 1 + this many times; 0 = the paper's
    cuda_graph: bool = True  # mode "stateful" on CUDA: replay one captured step (falls back to eager if capture fails)

    def __post_init__(self) -> None:
        require(self.steps >= 1, "sample.steps", "at least 1", self.steps)
        # nan and inf temperatures pass a plain `> 0` and sample silence or noise: every float must be finite
        require(finite(self.temperature) and self.temperature > 0, "sample.temperature", "> 0 and finite",
                self.temperature)
        require(self.mode in MODES, "sample.mode", f"one of {', '.join(map(repr, MODES))}", self.mode)
        require(self.window >= 1, "sample.window", "at least 1", self.window)
        require(self.silence_bars >= 0, "sample.silence_bars", "at least 0", self.silence_bars)
        require(finite(self.silence_step) and self.silence_step >= 0, "sample.silence_step", ">= 0 and finite",
                self.silence_step)
        require(self.silence_redraws >= 0, "sample.silence_redraws", ">= 0", self.silence_redraws)


def silence_temperature(silent_steps: Tensor, cfg: SampleConfig) -> Tensor:
    """(B,) int: consecutive silent steps just generated, per piece -> (B,) float temperature for the next step.

    T = base + silence_step * max(0, silent_steps - silence_bars * 16): base during the first full silent bar(s),
    then one `silence_step` more per further silent step.
    """
    extra = (silent_steps - cfg.silence_bars * STEPS_PER_BAR).clamp(min=0)
    return cfg.temperature + cfg.silence_step * extra.to(torch.float32)


def _zero_state(lstms: nn.ModuleList, batch: int) -> LSTMState:
    """Explicit zero (h, c) per layer, each (1, batch, hidden): what nn.LSTM uses for None, as real tensors."""
    w = lstms[0].weight_hh_l0
    return [(w.new_zeros(1, batch, lstm.hidden_size), w.new_zeros(1, batch, lstm.hidden_size)) for lstm in lstms]


def _sample_note(out: Tensor, u: Tensor, temp: Tensor, sounded_before: Tensor, play_only: bool) -> Tensor:
    """Sample one note of every piece.

    out: (B, 3) [play logit, replay logit, volume]; u: (B, 2) its uniforms {play, replay}; temp: (B,); sounded_before:
    (B,) bool, the note sounded at t-1. Returns (B, 3) [play, replay, volume].
    """
    play = (u[:, 0] < torch.sigmoid(out[:, PLAY] / temp)).float()  # (B,)
    if play_only:
        replay, volume = torch.zeros_like(play), play
    else:
        struck = u[:, 1] < torch.sigmoid(out[:, REPLAY] / temp)
        replay = (struck & sounded_before).float() * play  # replay needs a note that sounded at t-1
        volume = out[:, VOLUME].clamp(0.0, 1.0) * play  # clamp: a linear volume head may leave [0, 1]
    return torch.stack([play, replay, volume], dim=-1)


def _note_loop(model: DeepJ, h: Tensor, u: Tensor, temp: Tensor, sounded_before: Tensor, style_emb: Tensor) -> Tensor:
    """The note axis carried from note to note (modes "stateful" and "window").

    h: (B, N, time_hidden) time-axis output of the step; u: (B, N, 2) its uniforms; temp: (B,); sounded_before: (B, N)
    bool. Returns the sampled step (B, N, 3).
    """
    b, n, _ = h.shape
    lower = h.new_zeros(b, NUM_CHANNELS)  # (B, 3): below the lowest note
    state = _zero_state(model.note_lstm, b)
    notes = []
    for i in range(n):
        out, state = model.note_step(h[:, i], lower, style_emb, state)  # (B, 3)
        lower = _sample_note(out.float(), u[:, i], temp, sounded_before[:, i], model.cfg.play_only)  # (B, 3)
        notes.append(lower)  # ... and the next note's lower neighbour
    return torch.stack(notes, dim=1)  # (B, N, 3)


def _paper_note_loop(model: DeepJ, h: Tensor, u: Tensor, temp: Tensor, sounded_before: Tensor,
                     style_emb: Tensor) -> Tensor:
    """The paper's note axis: for each note the whole note axis from a zero state over all N notes (O(N^2)).

    Same arguments and result as `_note_loop`. Notes above the one being sampled have zero lower neighbours; the note
    axis is causal low -> high, so they do not change the output taken.
    """
    b, n, _ = h.shape
    lower = h.new_zeros(b, n, NUM_CHANNELS)  # (B, N, 3): lower[:, i] = sampled note i-1, zeros from the next one up
    notes = []
    for i in range(n):
        out, _ = model.note_axis(h[:, None], lower[:, None], style_emb)  # (B, 1, N, 3): all N notes
        note = _sample_note(out[:, 0, i].float(), u[:, i], temp, sounded_before[:, i], model.cfg.play_only)  # (B, 3)
        if i + 1 < n:
            lower[:, i + 1] = note
        notes.append(note)
    return torch.stack(notes, dim=1)  # (B, N, 3)


def _redrawn_step(note_loop, model: DeepJ, h: Tensor, u: Tensor, temp: Tensor, sounded_before: Tensor,
                  style_emb: Tensor, redraw: Tensor) -> Tensor:
    """One step from D = 1 + K draws of uniforms: `note_loop` over all draws at once; a piece with `redraw` set keeps
    its first draw that sounds (draw 0 if none does), every other piece keeps draw 0.

    h: (B, N, H) time-axis output of the step; u: (D, B, N, 2) the draws' uniforms; temp, sounded_before, style_emb as
    in `_note_loop`; redraw: (B,) bool, the step would begin a silence. Returns (B, N, 3). One batched pass of D * B
    pieces and no data-dependent control flow, so every mode and a CUDA graph draw and pick the same.
    """
    d, b = u.shape[:2]
    if d == 1:
        return note_loop(model, h, u[0], temp, sounded_before, style_emb)

    def rep(x: Tensor) -> Tensor:  # (B, ...) -> (D * B, ...), draw-major like u.reshape
        return x.repeat(d, *([1] * (x.dim() - 1)))

    steps = note_loop(model, rep(h), u.reshape(d * b, *u.shape[2:]), rep(temp), rep(sounded_before), rep(style_emb))
    steps = steps.view(d, b, *steps.shape[1:])  # (D, B, N, 3)
    first = (steps[..., PLAY] > 0.5).any(dim=-1).int().argmax(dim=0)  # (B,): first sounding draw; 0 if none sounds
    first = first * redraw  # draw 0 where the step may not be redrawn
    return steps[first, torch.arange(b, device=steps.device)]  # (B, N, 3)


def _time_window(model: DeepJ, prevs: Tensor, t: int, window: int, style_emb: Tensor | list[Tensor]) -> Tensor:
    """The paper's sliding window: the time axis over previous steps max(0, t-window+1) .. t from a zero state.

    prevs: (B, steps+1, N, 3) with prevs[:, s] = the notes of step s-1 (zeros for s = 0). style_emb: (B, style_dim)
    for every step (one time-axis call over the window), or a list with each step's (B, style_dim) (a morph: the
    window is stepped through, each step with its own style; `time_axis` takes one style per call). Returns (B, N, H).
    """
    lo = max(0, t - window + 1)
    if isinstance(style_emb, list):
        beat = prevs.new_zeros(prevs.shape[0], dtype=torch.long)  # (B,)
        state = None
        for s in range(lo, t + 1):
            h, state = model.time_step(prevs[:, s], beat.fill_(s % STEPS_PER_BAR), style_emb[s], state)  # (B, N, H)
        return h
    prev = prevs[:, lo : t + 1]  # (B, W, N, 3)
    beat = (torch.arange(lo, t + 1, device=prev.device) % STEPS_PER_BAR).expand(prev.shape[0], -1)  # (B, W)
    h, _ = model.time_axis(model.time_features(prev, beat), style_emb)  # (B, W, N, H)
    return h[:, -1]  # (B, N, H): the output for step t


def _primer_silence(primer: Tensor) -> tuple[Tensor, Tensor]:
    """(B, P, N, 3) primer -> the silence counter and "started" flag it leaves, each (B,): the silent steps at its end
    (P if none sounds), and whether any of its steps sounds."""
    sounding = (primer[..., PLAY] > 0.5).any(dim=-1)  # (B, P)
    steps = torch.arange(primer.shape[1], device=primer.device)  # (P,)
    last = torch.where(sounding, steps, -1).max(dim=1).values  # (B,): the last sounding step, -1 if none
    return primer.shape[1] - 1 - last, sounding.any(dim=1)


class _StatefulStep:
    """One generated step of mode "stateful" on static buffers, run eagerly or replayed as a captured CUDA graph.

    The buffers hold everything a step reads: the previous step, the beat, the step's uniforms, the style embedding,
    the time-LSTM state and the silence counter. `run` reads them and writes the new step, state and counter back into
    them, so a graph of one `run`, replayed T times, generates T steps; the caller only fills `beat` and `u` (and
    `style_emb`, where the style changes) before each step.
    """

    def __init__(self, model: DeepJ, style_emb: Tensor, cfg: SampleConfig):
        self.model, self.cfg = model, cfg
        self.style_emb = style_emb.clone()  # (B, style_dim): a buffer of its own, which a morph overwrites per step
        b, n = style_emb.shape[0], model.cfg.num_notes
        dev = style_emb.device
        self.prev = torch.zeros(b, n, NUM_CHANNELS, device=dev)  # (B, N, 3): step t-1 before `run`, step t after
        self.beat = torch.zeros(b, dtype=torch.long, device=dev)  # (B,): t % 16
        self.u = torch.zeros(1 + cfg.silence_redraws, b, n, 2, device=dev)  # (D, B, N, {play, replay}): step t's draws
        self.silent = torch.zeros(b, dtype=torch.long, device=dev)  # (B,): consecutive silent steps before t
        self.started = torch.zeros(b, dtype=torch.bool, device=dev)  # (B,): a step of the piece has sounded
        self.time_state = _zero_state(model.time_lstm, b * n)  # per layer (h, c), each (1, B*N, time_hidden)
        self.graph: torch.cuda.CUDAGraph | None = None

    def reset(self) -> None:
        """Back to the start of a piece: silence before it, zero LSTM state."""
        for buf in (self.prev, self.beat, self.u, self.silent, self.started,
                    *(x for hc in self.time_state for x in hc)):
            buf.zero_()

    def prime(self, primer: Tensor) -> None:
        """At the start of a piece, take a primer (B, P, N, 3) as its first P steps: the time axis stepped through
        it from the zero state (P `time_step` calls, the ones generating those steps would have made, so the state is
        exactly theirs), then the buffers as generating them would have left them: the primer's last step as the
        previous step, its trailing silence as the silence counter, whether it sounded as `started`."""
        state = self.time_state
        prev = torch.zeros_like(self.prev)  # (B, N, 3): before the first step, silence
        for p in range(primer.shape[1]):
            _, state = self.model.time_step(prev, self.beat.fill_(p % STEPS_PER_BAR), self.style_emb, state)
            prev = primer[:, p]
        for (h_buf, c_buf), (h_new, c_new) in zip(self.time_state, state):
            h_buf.copy_(h_new)
            c_buf.copy_(c_new)
        self.prev.copy_(prev)
        silent, started = _primer_silence(primer)
        self.silent.copy_(silent)
        self.started.copy_(started)

    def run(self) -> None:
        model = self.model
        temp = silence_temperature(self.silent, self.cfg)  # (B,)
        h, state = model.time_step(self.prev, self.beat, self.style_emb, self.time_state)  # (B, N, time_hidden)
        redraw = (self.silent == 0) | ~self.started  # (B,): this step would begin a silence
        step = _redrawn_step(_note_loop, model, h, self.u, temp, self.prev[..., PLAY] > 0.5, self.style_emb, redraw)
        sounding = (step[..., PLAY] > 0.5).any(dim=-1)  # (B,)
        self.silent.copy_(torch.where(sounding, torch.zeros_like(self.silent), self.silent + 1))
        self.started.copy_(self.started | sounding)
        for (h_buf, c_buf), (h_new, c_new) in zip(self.time_state, state):
            h_buf.copy_(h_new)
            c_buf.copy_(c_new)
        self.prev.copy_(step)  # last: everything above read the previous step

    def capture(self) -> None:
        """Record `run` as a CUDA graph (PyTorch's recipe: warm up on a side stream, capture on it) and reset the
        buffers, which the warm-up steps changed."""
        stream = torch.cuda.Stream(self.prev.device)
        stream.wait_stream(torch.cuda.current_stream(self.prev.device))
        with torch.cuda.stream(stream):
            for _ in range(GRAPH_WARMUP_STEPS):
                self.run()
        torch.cuda.current_stream(self.prev.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # The same stream as the warm-up: no cuBLAS/cuDNN handle or workspace is created during capture. thread_local:
        # generation may run inside training (deepj/training/samples.py), whose other threads (DataLoader pinning, NCCL
        # watchdog) must stay free to call CUDA while we capture; the default "global" mode would refuse them.
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            self.run()
        self.graph = graph
        self.reset()

    def __call__(self, t: int, u: Tensor) -> Tensor:
        """Generate step t from its uniforms u (D, B, N, 2). Returns the buffer holding the step (B, N, 3): copy it
        out before the next call."""
        self.beat.fill_(t % STEPS_PER_BAR)
        self.u.copy_(u)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.run()
        return self.prev


def _capture_or_warn(stepper: _StatefulStep) -> float:
    """Capture the step's CUDA graph; if that fails, warn in one line and leave the stepper eager. Returns seconds."""
    t0 = time.perf_counter()
    try:
        stepper.capture()
    except RuntimeError as e:  # CUDA and cuDNN errors surface as RuntimeError (torch.AcceleratorError subclasses it)
        stepper.graph = None
        stepper.reset()
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        warnings.warn(f"deepj.sampling: CUDA graph capture failed, sampling eagerly: {first_line}", stacklevel=3)
    torch.cuda.synchronize(stepper.prev.device)
    return time.perf_counter() - t0


def _check_inputs(model: DeepJ, style: Tensor, cfg: SampleConfig, primer: Tensor | None) -> Tensor | None:
    """Refuse a style or primer of the wrong shape, naming it; returns the primer as (B, P, N, 3) float32 (or None)."""
    mcfg = model.cfg
    if not ((style.ndim == 2 and style.shape[1] == mcfg.num_styles)
            or (style.ndim == 3 and style.shape[1:] == (cfg.steps, mcfg.num_styles))):
        raise ValueError(f"deepj.sampling: style must be (batch, {mcfg.num_styles}) for this model, or (batch, "
                         f"{cfg.steps}, {mcfg.num_styles}) for one style per step, got {tuple(style.shape)}")
    if primer is None:
        return None
    b = style.shape[0]
    if primer.ndim == 3:
        primer = primer.unsqueeze(0).expand(b, *primer.shape)
    want = (b, mcfg.num_notes, NUM_CHANNELS)
    if primer.ndim != 4 or primer.shape[1] < 1 or (primer.shape[0], *primer.shape[2:]) != want:
        raise ValueError(f"deepj.sampling: primer must be (steps, {want[1]}, {NUM_CHANNELS}) or ({b}, steps, "
                         f"{want[1]}, {NUM_CHANNELS}) with at least one step, got {tuple(primer.shape)}")
    if not primer.is_floating_point() or not bool(torch.isfinite(primer).all()):
        raise ValueError("deepj.sampling: primer must be a finite float roll")
    return primer.float()


def _style_embeddings(model: DeepJ, style: Tensor, steps: int, device: torch.device) -> list[Tensor]:
    """The style embedding (B, style_dim) of each generated step: one `embed_style` call per run of equal style
    vectors, shared by the steps of the run (so a constant style is embedded once, exactly as a (B, S) style)."""
    if style.ndim == 2:
        return [model.embed_style(style.to(device, torch.float32))] * steps
    changes = [True] + (style[:, 1:] != style[:, :-1]).any(dim=2).any(dim=0).tolist()  # (steps,) bool
    embs: list[Tensor] = []
    for t, changed in enumerate(changes):
        embs.append(model.embed_style(style[:, t].contiguous().to(device, torch.float32)) if changed else embs[-1])
    return embs


@torch.no_grad()
def generate(model: DeepJ, style: Tensor, cfg: SampleConfig, generator: torch.Generator,
             stats: dict | None = None, *, primer: Tensor | None = None,
             progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Sample B pieces at once. Returns the generated roll (B, steps, N, 3) float32 on CPU (without the primer).

    style: (B, S) one-hot or mixture for every step, or (B, steps, S) one per generated step. primer: None, or a roll
    (P, N, 3) (for every piece) or (B, P, N, 3) that the pieces continue (module docstring); its steps take the style
    of generated step 0. progress: called as progress(done, steps) every PROGRESS_EVERY generated steps and after the
    last; an exception it raises stops the generation.

    Random numbers come only from `generator` (two uniforms per note and step, drawn on the generator's device, one
    (1 + silence_redraws, B, N, 2) draw per step, outside any CUDA graph), so one seed gives the same pieces in every
    mode and with or without the graph; with silence_redraws = 0 they are the paper's sampler's draws. The model is
    put in eval mode and restored afterwards. If `stats` is a dict it receives "cuda_graph" (whether a captured graph
    generated the steps) and "capture_s" (seconds spent capturing it, 0 if not).
    """
    mcfg = model.cfg
    primer = _check_inputs(model, style, cfg, primer)
    param = next(model.parameters())
    if param.dtype != torch.float32:
        raise ValueError(f"deepj.sampling: the model's weights are {param.dtype}; sampling runs in float32: pass "
                         "a float32 copy (copy.deepcopy(model).float())")
    device = param.device
    was_training = model.training
    model.eval()
    try:
        b, n, steps = style.shape[0], mcfg.num_notes, cfg.steps
        lead = 0 if primer is None else primer.shape[1]  # P: steps of the piece before the first generated one
        embs = _style_embeddings(model, style, steps, device)  # per generated step, (B, style_dim)
        # prevs[:, s] holds the notes of step s-1 of the piece (the model's `prev` input at step s): the primer in
        # [:, 1 : P+1], generated step t (step P+t of the piece) written to [:, P+t+1].
        prevs = torch.zeros(b, lead + steps + 1, n, NUM_CHANNELS, device=device)  # (B, P+steps+1, N, 3)
        if primer is not None:
            primer = primer.to(device)
            prevs[:, 1 : lead + 1] = primer

        def uniforms() -> Tensor:  # (D, B, N, {play, replay}) for one step: the same draw in every mode
            shape = (1 + cfg.silence_redraws, b, n, 2)
            return torch.rand(shape, generator=generator, device=generator.device).to(device)

        def report(t: int) -> None:  # after generated step t
            if progress is not None and ((t + 1) % PROGRESS_EVERY == 0 or t + 1 == steps):
                progress(t + 1, steps)

        capture_s, graphed = 0.0, False
        if cfg.mode == "stateful":
            stepper = _StatefulStep(model, embs[0], cfg)
            if cfg.cuda_graph and device.type == "cuda":
                capture_s = _capture_or_warn(stepper)  # before priming: capture resets the buffers
                graphed = stepper.graph is not None
            if primer is not None:
                stepper.prime(primer)
            for t in range(steps):
                if t and embs[t] is not embs[t - 1]:
                    stepper.style_emb.copy_(embs[t])
                prevs[:, lead + t + 1] = stepper(lead + t, uniforms())
                report(t)
        else:
            note_loop = _note_loop if cfg.mode == "window" else _paper_note_loop
            # A morph steps through each window with every step's own style; primer steps have generated step 0's.
            window_embs = embs[0] if len(set(map(id, embs))) == 1 else [embs[0]] * lead + embs
            if primer is None:
                silent = torch.zeros(b, dtype=torch.long, device=device)  # (B,) consecutive silent steps so far
                started = torch.zeros(b, dtype=torch.bool, device=device)  # (B,) a step has sounded
            else:
                silent, started = _primer_silence(primer)
            for t in range(steps):
                s = lead + t  # the step of the piece
                prev_step = prevs[:, s]  # (B, N, 3)
                temp = silence_temperature(silent, cfg)  # (B,)
                h = _time_window(model, prevs, s, cfg.window, window_embs)  # (B, N, H)
                redraw = (silent == 0) | ~started  # (B,): this step would begin a silence
                step = _redrawn_step(note_loop, model, h, uniforms(), temp, prev_step[..., PLAY] > 0.5, embs[t],
                                     redraw)  # (B, N, 3)
                prevs[:, s + 1] = step
                sounding = (step[..., PLAY] > 0.5).any(dim=-1)  # (B,)
                silent = torch.where(sounding, torch.zeros_like(silent), silent + 1)
                started |= sounding
                report(t)
        if stats is not None:
            stats.update(cuda_graph=graphed, capture_s=capture_s)
        return prevs[:, lead + 1 :].float().cpu()  # (B, steps, N, 3)
    finally:
        model.train(was_training)
