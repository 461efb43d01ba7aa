"""Generation core: valid rolls, reproducible by seed, window == stateful within a window, the silence rule."""

import pytest
import torch

from deepj.config import ConfigError
from deepj.model import DeepJ, ModelConfig
from deepj.sampling import SampleConfig, generate, silence_temperature

TINY = dict(num_notes=12, num_styles=2, style_dim=8, conv_filters=6, conv_kernel=5, time_hidden=16, note_hidden=12)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return DeepJ(ModelConfig(**{**TINY, **kw}))


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


def test_window_equals_stateful_within_one_window():
    m = _model()
    stateful = _gen(m, 5, steps=20, mode="stateful")
    window = _gen(m, 5, steps=20, mode="window", window=20)
    assert torch.equal(stateful[..., :2], window[..., :2])  # the same notes and replays
    torch.testing.assert_close(stateful[..., 2], window[..., 2], atol=1e-6, rtol=0)  # GEMM shapes differ


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
    m = _model()
    with torch.no_grad():
        m.head.weight[0].zero_()
        m.head.bias[0] = -12.0
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


def test_config_and_style_checks():
    with pytest.raises(ConfigError, match="sample.mode"):
        SampleConfig(mode="greedy")
    with pytest.raises(ConfigError, match="sample.temperature"):
        SampleConfig(temperature=0.0)
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        generate(_model(), torch.ones(1, 3), SampleConfig(steps=2), torch.Generator())
