"""Generation core: valid rolls, reproducible by seed, window == paper == stateful within a window, the silence rule,
silence redraws, the CUDA graph of the stateful sampler (equal to eager; GPU tests skip without CUDA)."""

import pytest
import torch

import deepj.sampling
from deepj.config import ConfigError
from deepj.model import DeepJ, ModelConfig
from deepj.sampling import SampleConfig, generate, silence_temperature

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TINY = dict(num_notes=12, num_styles=2, style_dim=8, conv_filters=6, conv_kernel=5, time_hidden=16, note_hidden=12)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return DeepJ(ModelConfig(**{**TINY, **kw}))


def _constant_play_model(logit: float):
    """A tiny model whose play logit is `logit` whatever the input (p = sigmoid(logit) per note)."""
    m = _model()
    with torch.no_grad():
        m.head.weight[0].zero_()
        m.head.bias[0] = logit
    return m


def _gen(model, seed, style=None, **kw):
    style = torch.tensor([[1.0, 0.0], [0.5, 0.5]]) if style is None else style
    return generate(model, style, SampleConfig(**kw), torch.Generator().manual_seed(seed))


def test_shape_and_valid_values():
    m = _model().train()
    roll = _gen(m, 0, steps=40)
    assert roll.shape == (2, 40, 12, 3) and roll.dtype == torch.float32
    assert m.training  # the caller's mode is restored
    play, replay, volume = roll.unbind(-1)
    assert set(play.unique().tolist()) == {0.0, 1.0}  # something plays and something does not
    assert set(replay.unique().tolist()) <= {0.0, 1.0}
    assert (replay <= play).all()  # replay only where played
    assert (replay[:, 0] == 0).all() and (replay[:, 1:] <= play[:, :-1]).all()  # ... and sounding at t-1
    assert (volume[play == 0] == 0).all()
    assert ((volume[play == 1] > 0) & (volume[play == 1] < 1)).all()
    # an untrained model replays about half the time where allowed: the rule is exercised, not vacuous
    allowed = (play[:, 1:] == 1) & (play[:, :-1] == 1)
    assert 0 < replay[:, 1:][allowed].sum() < allowed.sum()


def test_volume_is_the_prediction():
    m = _model(bounded_volume=False).eval()
    with torch.no_grad():
        m.head.weight[2].zero_()
        m.head.bias[2] = 0.3  # linear volume head: constant 0.3
    roll = _gen(m, 0, steps=8)
    played = roll[..., 0] == 1
    assert played.any() and torch.allclose(roll[..., 2][played], torch.tensor(0.3))


def test_same_seed_same_pieces_different_seed_different():
    m = _model()
    a, b, c = _gen(m, 7, steps=24), _gen(m, 7, steps=24), _gen(m, 8, steps=24)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_style_changes_the_pieces():
    m = _model()
    a = _gen(m, 3, style=torch.tensor([[1.0, 0.0]]), steps=24)
    b = _gen(m, 3, style=torch.tensor([[0.0, 1.0]]), steps=24)
    assert not torch.equal(a, b)


def test_window_and_paper_equal_stateful_within_one_window():
    m = _model()
    stateful = _gen(m, 5, steps=20, mode="stateful")
    assert 0 < stateful[..., 0].mean() < 1 and stateful[..., 1].sum() > 0  # notes, rests and replays to compare
    for mode in ("window", "paper"):
        other = _gen(m, 5, steps=20, mode=mode, window=20)
        assert torch.equal(stateful[..., :2], other[..., :2]), mode  # the same notes and replays
        torch.testing.assert_close(stateful[..., 2], other[..., 2], atol=1e-6, rtol=0)  # GEMM shapes differ


def test_paper_equals_window_with_a_short_window_too():
    # Past the window the time axis of both forgets alike; the paper's O(N^2) note axis still equals the carried one.
    m = _model()
    window = _gen(m, 9, steps=24, mode="window", window=4)
    paper = _gen(m, 9, steps=24, mode="paper", window=4)
    assert torch.equal(window[..., :2], paper[..., :2])
    torch.testing.assert_close(window[..., 2], paper[..., 2], atol=1e-6, rtol=0)


def test_paper_mode_reruns_the_note_axis_over_all_notes_for_each_note(monkeypatch):
    m = _model()
    calls = []
    note_axis = m.note_axis

    def counting(h, lower, style_emb, state=None):
        calls.append((tuple(h.shape), state))
        return note_axis(h, lower, style_emb, state)

    monkeypatch.setattr(m, "note_axis", counting)
    _gen(m, 0, steps=3, mode="paper", silence_redraws=0)  # the paper's code, step 0 included
    assert len(calls) == 3 * 12  # N = 12 runs per step
    assert all(shape == (2, 1, 12, 16) and state is None for shape, state in calls)  # all N notes, zero state
    calls.clear()
    _gen(m, 0, steps=3, mode="window", silence_redraws=0)
    assert len(calls) == 3 * 12 and all(shape == (2, 1, 1, 16) for shape, _ in calls)  # one note at a time
    calls.clear()
    _gen(m, 0, steps=3, mode="paper", silence_redraws=3)  # every step: all 1 + 3 draws of both pieces in one batch
    assert [shape[0] for shape, _ in calls] == [8] * 36


def test_explicit_zero_state_equals_none():
    # The stateful sampler starts from explicit zero states (a CUDA graph needs real tensors), window modes from None.
    m = _model().eval()
    g = torch.Generator().manual_seed(0)
    prev = (torch.rand(2, 12, 3, generator=g) < 0.3).float()
    emb = m.embed_style(torch.tensor([[1.0, 0.0], [0.3, 0.7]]))
    zeros = deepj.sampling._zero_state(m.time_lstm, 2 * 12)
    with torch.no_grad():
        h_none, st_none = m.time_step(prev, torch.tensor([3, 3]), emb, None)
        h_zero, st_zero = m.time_step(prev, torch.tensor([3, 3]), emb, zeros)
        assert torch.equal(h_none, h_zero)
        assert all(torch.equal(a, b) for pa, pb in zip(st_none, st_zero) for a, b in zip(pa, pb))
        n_none, _ = m.note_step(h_none[:, 0], prev[:, 0], emb, None)
        n_zero, _ = m.note_step(h_none[:, 0], prev[:, 0], emb, deepj.sampling._zero_state(m.note_lstm, 2))
        assert torch.equal(n_none, n_zero)


def test_short_window_forgets():
    m = _model()
    stateful = _gen(m, 5, steps=24, mode="stateful")
    window = _gen(m, 5, steps=24, mode="window", window=4)
    assert torch.equal(stateful[:, :4], window[:, :4])  # identical while the window holds the whole past
    assert not torch.equal(stateful, window)
    play, replay = window[..., 0], window[..., 1]
    assert (replay[:, 1:] <= play[:, :-1]).all() and (replay <= play).all()


def test_play_only_rolls_are_binary():
    m = _model(play_only=True)
    roll = _gen(m, 0, steps=16)
    assert (roll[..., 1] == 0).all()
    assert torch.equal(roll[..., 2], roll[..., 0])
    assert roll[..., 0].sum() > 0


def test_silence_temperature_schedule():
    cfg = SampleConfig(temperature=0.8, silence_bars=1, silence_step=0.1)
    silent = torch.tensor([0, 5, 15, 16, 17, 20, 40])
    expected = torch.tensor([0.8, 0.8, 0.8, 0.8, 0.9, 1.2, 3.2])  # +0.1 per silent step beyond a full bar (16)
    torch.testing.assert_close(silence_temperature(silent, cfg), expected)
    two_bars = SampleConfig(temperature=1.0, silence_bars=2, silence_step=0.5)
    torch.testing.assert_close(silence_temperature(torch.tensor([32, 33, 35]), two_bars), torch.tensor([1.0, 1.5, 2.5]))


def test_silence_rule_breaks_a_silence():
    # A model that (almost) never plays: play logit -12 whatever the input, p = 6e-6 per note at T = 1.
    m = _constant_play_model(-12.0)
    style = torch.tensor([[1.0, 0.0]] * 3)
    quiet = _gen(m, 0, style=style, steps=96, silence_step=0.0)
    assert quiet[..., 0].sum() == 0  # without the rule the pieces stay silent
    roll = _gen(m, 0, style=style, steps=96)
    played = roll[..., 0].sum(-1) > 0  # (B, steps)
    assert played.any(dim=1).all()  # with it, every piece plays after its silence...
    assert not played[:, :17].any()  # ... but not before a full bar of silence has passed (T = 1.1 at step 17)
    for piece in played:  # a sounding step resets T to 1: the next bar is silent again, then T climbs anew
        first = int(piece.nonzero()[0])
        assert first + 17 < 96 and not piece[first + 1 : first + 17].any()


def test_silence_redraws_make_a_silence_begin_rarely_but_let_it_last():
    # Play logit -3.9 whatever the input: p = 0.0198 per note, so a step of 12 notes is silent with q = 0.787 per draw.
    m = _constant_play_model(-3.9)
    style = torch.tensor([[1.0, 0.0]] * 64)

    def rates(k):  # P(first step silent), P(silent | the step before sounded), P(silent | silent before, started)
        silent = _gen(m, 0, style=style, steps=48, silence_redraws=k, silence_step=0.0)[..., 0].sum(-1) == 0  # (B, T)
        started = torch.cummax((~silent).int(), dim=1).values.bool()  # (B, T): a step up to t has sounded
        after_sound, after_silence = ~silent[:, :-1], silent[:, :-1] & started[:, :-1]
        return (float(silent[:, 0].float().mean()), float(silent[:, 1:][after_sound].float().mean()),
                float(silent[:, 1:][after_silence].float().mean()))

    first, begin, go_on = rates(0)  # the paper's sampler: q everywhere
    assert 0.65 < first < 0.9 and 0.72 < begin < 0.85 and 0.72 < go_on < 0.85
    first, begin, go_on = rates(2)  # a silence begins only if 3 draws are silent: q^3 = 0.49; a begun one lasts: q
    assert 0.3 < first < 0.65 and 0.4 < begin < 0.58 and 0.72 < go_on < 0.85


def test_redrawn_step_keeps_the_first_draw_that_sounds():
    # A note loop whose note i plays where its play uniform is below 0.2: which draws sound is known from u alone.
    def note_loop(model, h, u, temp, sounded_before, style_emb):
        play = (u[..., 0] < 0.2).float()  # (D*B, N)
        return torch.stack([play, torch.zeros_like(play), play * (1 + u[..., 1])], dim=-1)

    d, b, n = 4, 6, 3
    u = torch.rand(d, b, n, 2, generator=torch.Generator().manual_seed(3))
    u[:, 0, :, 0] = 0.9  # piece 0: no draw sounds -> draw 0
    u[0, 1, 1, 0] = 0.1  # piece 1: draw 0 sounds
    u[:3, 2, :, 0], u[2, 2, 2, 0] = 0.9, 0.1  # piece 2: draws 0 and 1 silent, draw 2 sounds (its note 2 only)
    u[0, 3, :, 0], u[1, 3, 0, 0] = 0.9, 0.1  # piece 3: draw 0 silent, draw 1 sounds, but it may not be redrawn
    redraw = torch.tensor([True, True, True, False, True, True])
    step = deepj.sampling._redrawn_step(note_loop, None, torch.zeros(b, n, 5), u, torch.ones(b),
                                        torch.zeros(b, n, dtype=torch.bool), torch.zeros(b, 8), redraw)
    for piece in range(b):
        sounds = [bool((u[k, piece, :, 0] < 0.2).any()) for k in range(d)]
        k = sounds.index(True) if any(sounds) and redraw[piece] else 0
        assert torch.equal(step[piece], note_loop(None, None, u[k, piece], None, None, None)), piece
    assert not step[0, :, 0].any() and step[1, 1, 0] == 1 and torch.equal(step[2, :, 0], torch.tensor([0.0, 0, 1]))
    assert not step[3, :, 0].any()


def test_config_and_style_checks():
    with pytest.raises(ConfigError, match="sample.mode.*'paper'"):
        SampleConfig(mode="greedy")
    with pytest.raises(ConfigError, match="sample.temperature"):
        SampleConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="sample.silence_redraws"):
        SampleConfig(silence_redraws=-1)
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        generate(_model(), torch.ones(1, 3), SampleConfig(steps=2), torch.Generator())


def test_stats_say_no_graph_on_cpu():
    stats = {}
    generate(_model(), torch.eye(2), SampleConfig(steps=4), torch.Generator().manual_seed(0), stats)
    assert stats == {"cuda_graph": False, "capture_s": 0.0}


def test_failed_capture_warns_in_one_line_and_leaves_the_step_eager(monkeypatch):
    m = _model().eval()
    stepper = deepj.sampling._StatefulStep(m, m.embed_style(torch.eye(2)).detach(), SampleConfig())
    stepper.silent.fill_(5)  # as if warm-up steps had run before capture failed

    def failing_capture():
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(stepper, "capture", failing_capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    with pytest.warns(UserWarning, match="failed, sampling eagerly: CUDA error: operation not permitted") as rec:
        deepj.sampling._capture_or_warn(stepper)
    assert "\n" not in str(rec[0].message)
    assert stepper.graph is None and int(stepper.silent.sum()) == 0  # reset: the piece starts from silence


# ------------------------------------------------------------------------------------------------ primer and morph
def _primer(b: int, p: int, n: int = 12, seed: int = 0) -> torch.Tensor:
    """A valid roll (B, P, N, 3): a fifth of the cells play, replays only where the note sounded the step before."""
    g = torch.Generator().manual_seed(seed)
    play = (torch.rand(b, p, n, generator=g) < 0.2).float()
    before = torch.cat([torch.zeros(b, 1, n), play[:, :-1]], dim=1)
    replay = play * before * (torch.rand(b, p, n, generator=g) < 0.5).float()
    return torch.stack([play, replay, play * torch.rand(b, p, n, generator=g)], dim=-1)


def _morph(steps: int) -> torch.Tensor:
    """(2, steps, 2): piece 0 moves from style 0 to style 1 step by step, piece 1 the other way."""
    w = torch.linspace(0, 1, steps)
    return torch.stack([torch.stack([1 - w, w], dim=-1), torch.stack([w, 1 - w], dim=-1)])


def test_primed_state_equals_stepping_through_the_primer():
    m = _model().eval()
    primer = _primer(2, 21)
    primer[0, -1, 4] = torch.tensor([1.0, 0.0, 0.5])  # piece 0 ends in sound
    primer[1, -5:] = 0  # piece 1 in 5 silent steps
    emb = m.embed_style(torch.tensor([[1.0, 0.0], [0.3, 0.7]])).detach()
    stepper = deepj.sampling._StatefulStep(m, emb, SampleConfig())
    with torch.no_grad():  # as in generate (with autograd on, CPU LSTMs take another path that rounds otherwise)
        stepper.prime(primer)
    # By hand: the time axis at step p reads step p-1 (silence before step 0) at beat p % 16, from a zero state.
    prev = torch.cat([torch.zeros(2, 1, 12, 3), primer[:, :-1]], dim=1)  # (B, P, N, 3)
    beat = torch.arange(21) % 16
    state = None
    with torch.no_grad():
        for p in range(21):
            _, state = m.time_step(prev[:, p], beat[p].expand(2), emb, state)
        _, whole = m.time_axis(m.time_features(prev, beat.expand(2, -1)), emb)  # one call over the whole primer
    for (h, c), (h_ref, c_ref), (h_seq, c_seq) in zip(stepper.time_state, state, whole):
        assert torch.equal(h, h_ref) and torch.equal(c, c_ref)
        torch.testing.assert_close(h, h_seq, rtol=0, atol=1e-6)  # whole-sequence kernels may round differently
        torch.testing.assert_close(c, c_seq, rtol=0, atol=1e-6)
    assert torch.equal(stepper.prev, primer[:, -1])
    assert stepper.silent.tolist() == [0, 5] and stepper.started.tolist() == [True, True]


def test_primer_silence_is_its_trailing_silence():
    primer = torch.zeros(3, 6, 12, 3)
    primer[0, 5, 3, 0] = 1  # sounds at its last step
    primer[1, 1, 0, 0] = 1  # sounds at step 1, then 4 silent steps
    silent, started = deepj.sampling._primer_silence(primer)  # piece 2 never sounds
    assert silent.tolist() == [0, 4, 6] and started.tolist() == [True, True, False]


def test_a_primer_is_continued_alike_in_every_mode():
    m = _model()
    style, primer = torch.tensor([[1.0, 0.0], [0.5, 0.5]]), _primer(2, 21)

    def gen(mode, primer=primer, window=41):
        cfg = SampleConfig(steps=20, mode=mode, window=window)
        return generate(m, style, cfg, torch.Generator().manual_seed(5), primer=primer)

    stateful = gen("stateful")
    assert stateful.shape == (2, 20, 12, 3)  # the generated steps only
    assert 0 < stateful[..., 0].mean() < 1 and stateful[..., 1].sum() > 0
    # The window modes re-run the time axis over the primer and what follows, beats counted from the primer's start.
    for mode in ("window", "paper"):
        other = gen(mode)
        assert torch.equal(stateful[..., :2], other[..., :2]), mode
        torch.testing.assert_close(stateful[..., 2], other[..., 2], atol=1e-6, rtol=0)
    assert not torch.equal(stateful, _gen(m, 5, style=style, steps=20))  # the primer is heard
    assert not torch.equal(gen("window", window=4), gen("window"))  # ... and a short window forgets it
    assert torch.equal(gen("stateful", primer=primer[0]), gen("stateful", primer=primer[0].expand(2, -1, -1, -1)))


def test_a_morph_is_read_step_by_step_alike_in_every_mode():
    m = _model()
    style, primer = _morph(20), _primer(2, 5)

    def gen(mode, style=style):
        cfg = SampleConfig(steps=20, mode=mode, window=25)
        return generate(m, style, cfg, torch.Generator().manual_seed(5), primer=primer)

    stateful = gen("stateful")
    for mode in ("window", "paper"):  # each past step of the window re-run with its own style
        other = gen(mode)
        assert torch.equal(stateful[..., :2], other[..., :2]), mode
        torch.testing.assert_close(stateful[..., 2], other[..., 2], atol=1e-6, rtol=0)
    constant = gen("stateful", style[:, 0])  # step 0's style throughout
    assert torch.equal(stateful[:, 0], constant[:, 0]) and not torch.equal(stateful, constant)
    # A (B, steps, S) style that never changes is the (B, S) call, bit for bit.
    assert torch.equal(gen("stateful", style[:, :1].expand(-1, 20, -1)), constant)


def test_primer_and_per_step_style_shapes_are_checked():
    m, g = _model(), torch.Generator()
    cfg = SampleConfig(steps=4)
    with pytest.raises(ValueError, match=r"or \(batch, 4, 2\) for one style per step, got \(1, 5, 2\)"):
        generate(m, torch.ones(1, 5, 2), cfg, g)
    for bad in (torch.zeros(3, 6, 12, 3), torch.zeros(6, 11, 3), torch.zeros(0, 12, 3), torch.zeros(12, 3)):
        with pytest.raises(ValueError, match="primer must be"):
            generate(m, torch.eye(2), cfg, g, primer=bad)
    with pytest.raises(ValueError, match="finite float roll"):
        generate(m, torch.eye(2), cfg, g, primer=torch.full((2, 12, 3), float("nan")))


# ------------------------------------------------------------------------------------------------ CUDA (device)
def _gen_cuda(model, seed, steps, style, **kw):
    stats = {}
    gen = torch.Generator(device="cuda").manual_seed(seed)
    roll = generate(model, style.cuda(), SampleConfig(steps=steps, **kw), gen, stats)
    return roll, stats


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("quiet", [False, True], ids=["busy", "quiet"])
def test_cuda_graph_equals_eager(quiet):
    """The graph replays the eager step's kernels on the same uniforms, so the rolls match exactly. (They could differ
    only if capture picked other kernels than eager, e.g. another cuDNN RNN algorithm: then a volume might move in
    its last bits and a note flip only where a uniform lies within that of its threshold.)"""
    # quiet: play logit -12, long silences, so the in-graph silence counter and temperature rise are exercised
    m = (_constant_play_model(-12.0) if quiet else _model()).cuda()
    style = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    eager, eager_stats = _gen_cuda(m, 11, 96 if quiet else 40, style, cuda_graph=False)
    graphed, graph_stats = _gen_cuda(m, 11, 96 if quiet else 40, style, cuda_graph=True)
    assert graph_stats["cuda_graph"] and graph_stats["capture_s"] > 0
    assert not eager_stats["cuda_graph"]
    assert eager[..., 0].sum() > 0
    if quiet:
        assert not eager[:, :17, :, 0].any()  # a silent first bar, then the silence rule makes it play
    assert torch.equal(eager, graphed)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_capture_failure_falls_back_to_eager(monkeypatch):
    m = _model().cuda()
    style = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    eager, _ = _gen_cuda(m, 4, 20, style, cuda_graph=False)

    def failing_capture(self):
        raise RuntimeError("capture refused")

    monkeypatch.setattr(deepj.sampling._StatefulStep, "capture", failing_capture)
    with pytest.warns(UserWarning, match="capture refused"):
        fallback, stats = _gen_cuda(m, 4, 20, style, cuda_graph=True)
    assert not stats["cuda_graph"]
    assert torch.equal(eager, fallback)


@pytest.mark.gpu
@needs_cuda
def test_modes_equal_on_cuda_within_one_window():
    m = _model().cuda()
    style = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # TF32 rounding could flip a note
    try:
        rolls = {mode: _gen_cuda(m, 2, 20, style, mode=mode, window=20)[0] for mode in ("stateful", "window", "paper")}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    for mode in ("window", "paper"):
        assert torch.equal(rolls["stateful"][..., :2], rolls[mode][..., :2]), mode
        torch.testing.assert_close(rolls["stateful"][..., 2], rolls[mode][..., 2], atol=1e-5, rtol=0)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_with_a_primer_and_a_morph_equals_eager():
    """The primer is run eagerly into the graph's buffers after capture; a morph is copied into its style buffer."""
    m = _model().cuda()
    rolls = []
    for graph in (False, True):
        stats = {}
        rolls.append(generate(m, _morph(40).cuda(), SampleConfig(steps=40, cuda_graph=graph),
                              torch.Generator(device="cuda").manual_seed(3), stats, primer=_primer(2, 19).cuda()))
        assert stats["cuda_graph"] == graph
    assert rolls[0][..., 0].sum() > 0 and torch.equal(*rolls)
