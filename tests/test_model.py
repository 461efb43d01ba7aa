"""DeepJ's module and loss: size, inputs, causality, both execution paths, the loss arithmetic, and that it learns."""

import math

import pytest
import torch
import torch.nn.functional as F

from deepj.config import ConfigError
from deepj.model import DeepJ, ModelConfig, dropout
from deepj.training.loss import deepj_loss, play_nll_sum

TINY = dict(num_notes=14, num_styles=3, style_dim=8, conv_filters=6, conv_kernel=5, time_hidden=16, note_hidden=12)


def _inputs(b=2, t=6, n=14, s=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    play = (torch.rand(b, t + 1, n, generator=g) < 0.4).float()  # (B, T+1, N)
    replay = (torch.rand(b, t + 1, n, generator=g) < 0.3).float() * play
    volume = torch.rand(b, t + 1, n, generator=g) * play
    roll = torch.stack([play, replay, volume], -1)  # (B, T+1, N, 3)
    prev, target = roll[:, :-1].clone(), roll[:, 1:].clone()
    beat = torch.arange(t).repeat(b, 1) % 16  # (B, T)
    style = torch.softmax(torch.randn(b, s, generator=g), -1)  # (B, S) mixtures
    return prev, target, beat, style


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return DeepJ(ModelConfig(**{**TINY, **kw})).eval()


# ------------------------------------------------------------------------------------------------ size and inputs
def test_default_parameter_count_by_hand():
    S = 23  # the paper's style slots
    lstm = lambda i, h: 4 * h * (i + h) + 2 * 4 * h  # noqa: E731  W_ih, W_hh, and PyTorch's two bias vectors
    linear = lambda i, o: i * o + o  # noqa: E731
    expected = (
        3 * 64 * 24 + 64  # conv: 3 channels -> 64 filters, kernel 24             =     4,672
        + linear(S, 64)  # style embedding: 23 -> 64                                =     1,536
        + linear(64, 94) + lstm(94, 256)  # time layer 1: style proj + LSTM         =     6,110 + 360,448
        + linear(64, 256) + lstm(256, 256)  # time layer 2                          =    16,640 + 526,336
        + linear(64, 259) + lstm(259, 128)  # note layer 1: input 256 + 3 = 259     =    16,835 + 199,168
        + linear(64, 128) + lstm(128, 128)  # note layer 2                          =     8,320 + 132,096
        + linear(128, 3)  # heads: play, replay, volume                             =       387
    )
    assert expected == 1_272_548  # the paper: "about 1.27 M" (docs/design.md#outputs-and-sizes)
    assert DeepJ(ModelConfig(num_styles=S)).num_params() == expected
    assert ModelConfig().num_features == 94


def test_pitch_class_count_hand_case():
    m = DeepJ(ModelConfig(num_notes=48)).eval()
    play = torch.zeros(1, 2, 48)
    play[0, 0, 0] = play[0, 0, 12] = 1.0  # step 0: C2 and C3 (index 0 = MIDI 36 = C2)
    play[0, 1, 1] = play[0, 1, 13] = play[0, 1, 25] = play[0, 1, 47] = 1.0  # step 1: C#2, C#3, C#4 and B5
    count = m.pitch_class_count(play)  # (1, 2, 48)
    expected = torch.zeros(1, 2, 48)
    expected[0, 0, 0::12] = 2.0  # every C
    expected[0, 1, 1::12] = 3.0  # every C#
    expected[0, 1, 11::12] = 1.0  # every B
    assert torch.equal(count, expected)
    # and it reaches the features in column 13 (after position 1 and pitch class 12), from the previous step's play
    prev = torch.zeros(1, 2, 48, 3)
    prev[..., 0] = play
    feats = m.time_features(prev, torch.zeros(1, 2, dtype=torch.long))
    assert feats.shape == (1, 2, 48, 94)
    assert torch.equal(feats[..., 13], expected)
    assert torch.equal(feats[0, 0, :, 0], torch.arange(48) / 48)  # pitch position
    assert torch.equal(feats[0, 0, 14, 1:13], F.one_hot(torch.tensor(2), 12).float())  # D2 is pitch class 2


def test_pitch_class_count_range_not_multiple_of_octave():
    m = DeepJ(ModelConfig(num_notes=14, conv_kernel=5)).eval()
    play = torch.zeros(1, 1, 14)
    play[0, 0, 13] = 1.0
    assert m.pitch_class_count(play)[0, 0].tolist() == [0.0] + [1.0] + [0.0] * 11 + [1.0]


def test_conv_same_padding_is_keras():
    # Keras/TF 'same' with an even kernel pads (k-1)//2 below and k//2 above: with k = 4 a note sees 1 below, 2 above.
    m = DeepJ(ModelConfig(num_notes=10, conv_kernel=4, conv_filters=1, dropout=0.0)).eval()
    assert m.conv_pad == (1, 2)
    with torch.no_grad():
        m.conv.weight.zero_()
        m.conv.bias.zero_()
        m.conv.weight[0, 0] = torch.tensor([1.0, 10.0, 100.0, 1000.0])  # taps: n-1, n, n+1, n+2
    prev = torch.zeros(1, 1, 10, 3)
    prev[0, 0, 5, 0] = 1.0
    conv = m.time_features(prev, torch.zeros(1, 1, dtype=torch.long))[0, 0, :, 14]  # (N,) the one filter, tanh'd
    expected = torch.zeros(10)
    expected[[6, 5, 4, 3]] = torch.tanh(torch.tensor([1.0, 10.0, 100.0, 1000.0]))  # note 5 is n-1 of note 6, ...
    assert torch.allclose(conv, expected)


# ------------------------------------------------------------------------------------------------ forward
def test_output_shape_and_ranges():
    m = _tiny()
    prev, target, beat, style = _inputs()
    out = m(prev, target, beat, style)
    assert out.shape == (2, 6, 14, 3)
    assert ((out[..., 2] > 0) & (out[..., 2] < 1)).all()  # sigmoid volume
    unbounded = _tiny(bounded_volume=False)
    assert unbounded(prev, target, beat, style).shape == (2, 6, 14, 3)


def test_wrong_note_count_is_refused():
    m = _tiny()
    prev, target, beat, style = _inputs(n=12)
    with pytest.raises(ValueError, match="num_notes=14"):
        m(prev, target, beat, style)


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="model.dropout"):
        ModelConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="model.num_notes"):
        ModelConfig(num_notes=0)


@pytest.mark.parametrize("t,n", [(0, 0), (3, 5), (5, 13), (2, 1)])
def test_causality_along_time_and_notes(t, n):
    m = _tiny()
    prev, target, beat, style = _inputs()
    base = m(prev, target, beat, style)[:, t, n]
    g = torch.Generator().manual_seed(1)
    # Notes at and above n at step t, and everything after step t: invisible to out[t, n].
    p2, t2, b2 = prev.clone(), target.clone(), beat.clone()
    t2[:, t, n:] = torch.rand(t2[:, t, n:].shape, generator=g)
    t2[:, t + 1 :] = torch.rand(t2[:, t + 1 :].shape, generator=g)
    p2[:, t + 1 :] = torch.rand(p2[:, t + 1 :].shape, generator=g)
    b2[:, t + 1 :] = (b2[:, t + 1 :] + 7) % 16
    assert (m(p2, t2, b2, style)[:, t, n] - base).abs().max() <= 1e-6
    # The previous notes of step t (and, above the lowest note, the note just below) are seen.
    p3 = prev.clone()
    p3[:, t] = 1.0 - p3[:, t]
    assert (m(p3, target, beat, style)[:, t, n] - base).abs().max() > 1e-4
    if n > 0:
        t3 = target.clone()
        t3[:, t, n - 1] = 1.0 - t3[:, t, n - 1]
        assert (m(prev, t3, beat, style)[:, t, n] - base).abs().max() > 1e-4


def test_earlier_steps_and_lower_notes_are_seen():
    m = _tiny()
    prev, target, beat, style = _inputs()
    base = m(prev, target, beat, style)
    p2 = prev.clone()
    p2[:, 0] = 1.0 - p2[:, 0]  # step 0's previous notes reach the last step through the time LSTM
    assert (m(p2, target, beat, style)[:, -1] - base[:, -1]).abs().max() > 1e-5
    t2 = target.clone()
    t2[:, 2, 0] = 1.0 - t2[:, 2, 0]  # the lowest note reaches the highest through the note LSTM
    assert (m(prev, t2, beat, style)[:, 2, -1] - base[:, 2, -1]).abs().max() > 1e-5


def test_style_changes_the_output():
    m = _tiny()
    prev, target, beat, _ = _inputs()
    a = m(prev, target, beat, torch.eye(3)[[0, 0]])
    b = m(prev, target, beat, torch.eye(3)[[1, 1]])
    assert (a - b).abs().max() > 1e-3


def test_dropout_only_in_training():
    m = _tiny()
    prev, target, beat, style = _inputs()
    assert torch.equal(m(prev, target, beat, style), m(prev, target, beat, style))
    m.train()
    assert not torch.equal(m(prev, target, beat, style), m(prev, target, beat, style))


def test_lower_dropout_applies_to_the_lower_neighbour_only():
    # Only input dropout left on (0.5): the note axis, from a fixed time-axis output, is random in training through
    # its lower-neighbour input alone, unless lower_dropout = 0 turns that off; None inherits input_dropout.
    torch.manual_seed(0)
    h, lower = torch.randn(2, 3, 14, 16), (torch.rand(2, 3, 14, 3) < 0.5).float()
    style_emb = torch.randn(2, 8)
    for lower_dropout, random in ((None, True), (0.5, True), (0.0, False)):
        torch.manual_seed(1)
        m = DeepJ(ModelConfig(**TINY, dropout=0.0, input_dropout=0.5, lower_dropout=lower_dropout)).train()
        a, b = m.note_axis(h, lower, style_emb)[0], m.note_axis(h, lower, style_emb)[0]
        assert torch.equal(a, b) != random, lower_dropout
    with pytest.raises(ConfigError, match="model.lower_dropout"):
        ModelConfig(lower_dropout=1.0)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_cpu_dropout_rate_scale_and_gradient(p):
    """The CPU dropout's own masks: drop rate p, kept values scaled by 1 / (1 - p), gradient through the same mask,
    seeded by torch's generator, and a fresh mask per element of a broadcast (expanded) input."""
    x = torch.full((1_000_000,), 2.0, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, p, True)
    dropped = y == 0
    assert abs(dropped.float().mean().item() - p) < 0.003  # binomial sd over 1e6 draws is < 5e-4
    torch.testing.assert_close(y[~dropped], torch.full_like(y[~dropped], 2.0 / (1 - p)), rtol=1e-4, atol=0)
    y.sum().backward()
    assert torch.equal(x.grad == 0, dropped)
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p, True), y)
    assert not torch.equal(dropout(x, p, True), y)
    rows = torch.ones(7, 1).expand(7, 5000)  # (7, 5000) view of 7 values
    frac = (dropout(rows, p, True) == 0).float().mean(1)  # (7,): a mask shared along the view would give 0 or 1
    assert ((frac > 0) & (frac < 1)).all()
    assert dropout(x, p, False) is x and dropout(x, 0.0, True) is x


def test_cpu_dropout_attribute_chooses_the_mask_kind_per_model():
    """`DeepJ.cpu_dropout` (default True) draws `dropout`'s 16-bit masks; False on one instance draws `F.dropout`'s,
    and leaves every other model (and the class default) as it was."""
    m, other = _tiny().train(), _tiny().train()
    x = torch.ones(4, 300)
    torch.manual_seed(3)
    want = dropout(x, 0.5, True)
    torch.manual_seed(3)
    assert torch.equal(m._dropout(x, 0.5), want)
    m.cpu_dropout = False
    torch.manual_seed(3)
    torch_mask = F.dropout(x, 0.5, True)
    torch.manual_seed(3)
    assert torch.equal(m._dropout(x, 0.5), torch_mask) and not torch.equal(torch_mask, want)
    assert DeepJ.cpu_dropout is True and other.cpu_dropout is True
    torch.manual_seed(3)
    assert torch.equal(other._dropout(x, 0.5), want)
    assert m.eval()._dropout(x, 0.5) is x and other.eval()._dropout(x, 0.5) is x


def test_forward_equals_step_by_step():
    m = _tiny()
    prev, target, beat, style = _inputs(t=7)
    out = m(prev, target, beat, style)  # (B, T, N, 3)
    emb = m.embed_style(style)
    state = None
    for t in range(prev.shape[1]):
        h, state = m.time_step(prev[:, t], beat[:, t], emb, state)  # (B, N, H)
        note_state, lower = None, torch.zeros(2, 3)
        for n in range(prev.shape[2]):
            o, note_state = m.note_step(h[:, n], lower, emb, note_state)  # (B, 3)
            torch.testing.assert_close(o, out[:, t, n], atol=1e-5, rtol=0)
            lower = target[:, t, n]


def test_play_only_ignores_replay_and_volume():
    m = _tiny(play_only=True)
    prev, target, beat, style = _inputs()
    out = m(prev, target, beat, style)
    p2, t2 = prev.clone(), target.clone()
    p2[..., 1:] = torch.rand(p2[..., 1:].shape)
    t2[..., 1:] = torch.rand(t2[..., 1:].shape)
    assert torch.equal(m(p2, t2, beat, style), out)
    full = _tiny()
    assert not torch.equal(full(p2, t2, beat, style), full(prev, target, beat, style))
    assert m.num_params() == full.num_params()  # the same layers, so checkpoints share one shape


def test_runs_under_bf16_autocast_on_cpu():
    m = _tiny().train()
    prev, target, beat, style = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(prev, target, beat, style)
        loss, _ = deepj_loss(out, target)
    assert out.shape == (2, 6, 14, 3) and torch.isfinite(out.float()).all()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


# ------------------------------------------------------------------------------------------------ loss
def test_loss_hand_values():
    # One piece, one step, two notes. Note 0 plays (replay 1, volume 0.5); note 1 is silent.
    target = torch.tensor([[[[1.0, 1.0, 0.5], [0.0, 0.0, 0.0]]]])  # (1, 1, 2, 3)
    out = torch.tensor([[[[0.0, math.log(3.0), 0.75], [math.log(3.0), 2.0, 0.9]]]])  # logits: p = 0.5, 0.75
    total, parts = deepj_loss(out, target)
    play = (math.log(2.0) + math.log(4.0)) / 2  # note 0: -log 0.5; note 1 (target 0, p = 0.75): -log 0.25
    replay = math.log(4.0 / 3.0)  # played note 0 only: -log 0.75, averaged over 1 played note-step
    volume = 0.25**2  # (0.75 - 0.5)^2 over 1 played note-step; note 1's volume error 0.9^2 does not count
    assert parts["play"].item() == pytest.approx(play, rel=1e-6)
    assert parts["replay"].item() == pytest.approx(replay, rel=1e-6)
    assert parts["volume"].item() == pytest.approx(volume, rel=1e-6)
    assert total.item() == pytest.approx(play + replay + volume, rel=1e-6)
    only, only_parts = deepj_loss(out, target, play_only=True)
    assert only.item() == pytest.approx(play, rel=1e-6) and set(only_parts) == {"play"}


def test_loss_masks_unplayed_notes():
    g = torch.Generator().manual_seed(3)
    target = torch.rand(2, 4, 8, 3, generator=g)
    target[..., 0] = (target[..., 0] < 0.5).float()
    out = torch.randn(2, 4, 8, 3, generator=g)
    _, parts = deepj_loss(out, target)
    silent = target[..., 0] == 0
    out2 = out.clone()
    out2[..., 1][silent] += 5.0  # any replay / volume prediction on silent notes is free
    out2[..., 2][silent] -= 3.0
    _, parts2 = deepj_loss(out2, target)
    assert parts2["replay"] == parts["replay"] and parts2["volume"] == parts["volume"]
    played = ~silent
    # averaged over each window's played note-steps, then over the 2 windows
    vol = sum(((out[b, ..., 2] - target[b, ..., 2])[played[b]] ** 2).mean() for b in range(2)) / 2
    assert parts["volume"].item() == pytest.approx(vol.item(), rel=1e-6)
    pooled = ((out[..., 2] - target[..., 2])[played] ** 2).mean()  # a batch-wide count would differ here
    assert parts["volume"].item() != pytest.approx(pooled.item(), rel=1e-3)


def test_loss_no_nan_when_nothing_plays():
    target = torch.zeros(2, 3, 5, 3)
    out = torch.randn(2, 3, 5, 3, requires_grad=True)
    total, parts = deepj_loss(out, target)
    assert torch.isfinite(total) and parts["replay"] == 0 and parts["volume"] == 0
    total.backward()
    assert torch.isfinite(out.grad).all() and (out.grad[..., 1:] == 0).all()


def test_play_nll_sum_convention():
    target = torch.zeros(2, 3, 4, 3)
    target[..., 0] = 1.0
    out = torch.zeros(2, 3, 4, 3)  # p = 0.5 everywhere: log 2 nats per note
    assert play_nll_sum(out, target).item() == pytest.approx(4 * math.log(2.0))  # per frame: summed over 4 notes
    assert play_nll_sum(out, target, reduction="sum").item() == pytest.approx(6 * 4 * math.log(2.0))
    with pytest.raises(ValueError, match="reduction"):
        play_nll_sum(out, target, reduction="max")


# ------------------------------------------------------------------------------------------------ learning
def test_overfits_one_batch():
    torch.manual_seed(0)
    m = DeepJ(ModelConfig(**{**TINY, "time_hidden": 32, "note_hidden": 32}, dropout=0.0, input_dropout=0.0)).train()
    prev, target, beat, style = _inputs(b=2, t=16)
    opt = torch.optim.NAdam(m.parameters(), lr=0.01)
    first = None
    for _ in range(300):
        loss, _ = deepj_loss(m(prev, target, beat, style), target)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    final, _ = deepj_loss(m(prev, target, beat, style), target)
    assert final.item() <= 0.1 * first, (first, final.item())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_runs_under_autocast():
    m = _tiny()
    prev, target, beat, style = _inputs()
    cpu = m(prev, target, beat, style)
    mc = m.cuda()
    args = [x.cuda() for x in (prev, target, beat, style)]
    torch.testing.assert_close(mc(*args).cpu(), cpu, atol=1e-4, rtol=1e-4)  # cuDNN LSTMs vs CPU
    mc.train()
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype):
            loss, _ = deepj_loss(mc(*args), args[1])
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in mc.parameters())
        mc.zero_grad()
