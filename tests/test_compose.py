"""deepj.compose: continuing a MIDI file (the primer's notes come back exactly), styles that morph (exactly linear per
step, and what the model receives), the same pieces from the CLI and from compose, and every bad request or primer
refused with a sentence, through compose and through `python -m deepj.generate` (exit 2, no output folder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from midi_files import DRUM, MidiSpec, Q, note, track, write_spec

from deepj import generate as cli
from deepj.compose import (
    MAX_BARS,
    MAX_PIECES,
    MAX_PRIMER_BARS,
    Request,
    RequestError,
    check_checkpoint,
    check_request,
    compose,
    read_primer,
    style_schedule,
)
from deepj.model import DeepJ, ModelConfig
from deepj.music.constants import STEPS_PER_BAR
from deepj.music.midi_io import read_midi, write_midi
from deepj.music.representation import NOTE_DTYPE, roll_to_notes
from deepj.sampling import SampleConfig, generate
from deepj.training.checkpoint import CheckpointMeta, load_model


@pytest.fixture(scope="module")
def loaded(trained_run):
    """(model, meta) of the session's tiny trained run (debug config, 4 steps; pitches [36, 84))."""
    model, meta, _ = load_model(trained_run)
    return model, meta


def primer_file(path, *notes_or_events, drums=()):
    """A real MIDI file at 96 ticks per quarter (a step is Q ticks), with an optional drum track."""
    tracks = [track(*notes_or_events)] + ([track(*drums)] if drums else [])
    return write_spec(MidiSpec(tracks), path)


# The continuation test's primer: a note across every bar line the cuts fall on, a re-strike (67 at step 24), a note
# out of range (100) and a drum track, both dropped. The last note ends at step 52, in the fourth bar.
PRIMER = (note(0, 8 * Q, 60, 100), note(10 * Q, 20 * Q, 64, 90), note(20 * Q, 24 * Q, 67, 70),
          note(24 * Q, 28 * Q, 67, 50), note(30 * Q, 40 * Q, 48, 110), note(36 * Q, 52 * Q, 72, 80),
          note(40 * Q, 44 * Q, 100, 60))


def clipped(notes: np.ndarray, start: int, end: int) -> np.ndarray:
    """Grid notes sounding in [start, end), cut to it and shifted to begin at 0."""
    keep = (notes["end"] > start) & (notes["start"] < end)
    out = notes[keep].copy()
    out["start"] = np.maximum(out["start"], start) - start
    out["end"] = np.minimum(out["end"], end) - start
    return out


# ------------------------------------------------------------------------------------------------ continuation
@pytest.mark.parametrize("bars, start", [(2, 32), (3, 16), (None, 0), (9, 0)])
def test_continuation_reproduces_the_primer_notes_exactly(loaded, tmp_path, bars, start):
    model, meta = loaded
    path = primer_file(tmp_path / "primer.mid", *PRIMER, drums=[note(0, 4 * Q, 36, channel=DRUM)])
    grid = read_midi(path, meta.representation)  # the primer's notes as the grid keeps them
    assert int(grid["end"].max()) == 52 and 100 not in grid["pitch"]
    expected = clipped(grid, start, 52)
    assert len(expected) >= 2 and (start == 0 or ((grid["start"] < start) & (grid["end"] > start)).any())  # cut
    pieces = compose(model, meta, Request(["baroque"], bars=2, num=2, seed=1, primer=path, primer_bars=bars))
    assert len(pieces) == 2
    for piece in pieces:
        assert piece.primer_steps == 52 - start and piece.roll.shape == (52 - start + 32, 48, 3)
        np.testing.assert_array_equal(roll_to_notes(piece.roll[: piece.primer_steps], meta.representation), expected)
        assert piece.styles.shape == (len(piece.roll), meta.styles.num_styles)
        np.testing.assert_array_equal(piece.styles, meta.styles.vector(["baroque"]).expand(len(piece.roll), -1).numpy())
    assert not np.array_equal(pieces[0].roll, pieces[1].roll)  # one primer, two continuations


def test_continuation_only_is_the_continuation_of_the_same_draw(loaded, tmp_path):
    model, meta = loaded
    path = primer_file(tmp_path / "primer.mid", *PRIMER)
    request = Request(["classical"], bars=2, seed=4, primer=path, primer_bars=2)
    whole = compose(model, meta, request)[0]
    request.continuation_only = True
    only = compose(model, meta, request)[0]
    assert only.primer_steps == 0 and only.roll.shape == (32, 48, 3) and only.styles.shape[0] == 32
    np.testing.assert_array_equal(only.roll, whole.roll[whole.primer_steps :])
    # ... and the primer changed what the model played: without one the same seed gives another piece
    plain = compose(model, meta, Request(["classical"], bars=2, seed=4))[0]
    assert not np.array_equal(plain.roll, only.roll)


def test_leading_silent_bars_are_dropped(loaded, tmp_path):
    _, meta = loaded
    path = primer_file(tmp_path / "late.mid", note(35 * Q, 40 * Q, 60), note(40 * Q, 41 * Q, 62))
    roll = read_primer(path, meta, None)
    assert roll.shape == (41 - 32, 48, 3)  # from the bar line before the first note (step 32) to the last end
    assert roll[3, 60 - 36, 0] == 1 and not roll[:3, :, 0].any()


# ------------------------------------------------------------------------------------------------ morph
def test_morph_schedule_is_exactly_linear_over_the_bars_given(loaded):
    _, meta = loaded
    a, b = meta.styles.vector(["baroque"]).double(), meta.styles.vector(["mozart=3", "bach"]).double()
    sched = style_schedule(meta, Request(["baroque"], bars=6, morph_to=["mozart=3", "bach"], morph_bars=(2, 4)))
    assert sched.shape == (96, meta.styles.num_styles) and sched.dtype == torch.float32
    t0, t1 = 16, 63  # the first step of bar 2 and the last of bar 4
    for t in range(96):
        w = min(max((t - t0) / (t1 - t0), 0.0), 1.0)
        assert torch.equal(sched[t], ((1 - w) * a + w * b).float()), t
    assert torch.equal(sched[: t0 + 1], a.float().expand(t0 + 1, -1))  # exactly A up to bar 2's first step
    assert torch.equal(sched[t1:], b.float().expand(96 - t1, -1))  # exactly B from bar 4's last step on
    steps = torch.diff(sched[t0 : t1 + 1].double(), dim=0)  # equal increments: linear per step
    torch.testing.assert_close(steps, ((b - a) / (t1 - t0)).expand_as(steps), rtol=0, atol=1.5e-7)
    torch.testing.assert_close(sched.sum(1), torch.ones(96), rtol=0, atol=1e-6)
    whole = style_schedule(meta, Request(["baroque"], bars=2, morph_to=["classical"]))  # default: bars 1 to 2
    assert torch.equal(whole[0], a.float()) and torch.equal(whole[-1], meta.styles.vector(["classical"]))


def test_the_model_receives_the_morph_step_by_step(loaded, monkeypatch):
    model, meta = loaded
    request = Request(["baroque"], bars=4, num=2, seed=2, morph_to=["classical"], morph_bars=(2, 3))
    sched = style_schedule(meta, request)  # (64, S)
    seen = []
    embed = model.embed_style

    def spy(style):
        seen.append(style.clone())
        return embed(style)

    monkeypatch.setattr(model, "embed_style", spy)
    pieces = compose(model, meta, request)
    # One embedding per change of the style: step 0, then every step of bars 2-3 after the first, each (num, S).
    changes = [0, *range(17, 48)]
    assert len(seen) == len(changes)
    for t, got in zip(changes, seen):
        assert torch.equal(got, sched[t].expand(2, -1)), t
    monkeypatch.undo()
    # The same as the sampler given the schedule itself, and before the morph the same as no morph at all.
    direct = generate(model, sched.expand(2, -1, -1), SampleConfig(steps=64), torch.Generator().manual_seed(2))
    for piece, roll in zip(pieces, direct.numpy()):
        np.testing.assert_array_equal(piece.roll, roll)
        np.testing.assert_array_equal(piece.styles, sched.numpy())
    plain = compose(model, meta, Request(["baroque"], bars=4, num=2, seed=2))
    for morphed, unmorphed in zip(pieces, plain):
        np.testing.assert_array_equal(morphed.roll[:17], unmorphed.roll[:17])  # step 16 still has A exactly
    assert any(not np.array_equal(m.roll, p.roll) for m, p in zip(pieces, plain))


def test_primer_steps_have_the_first_style(loaded, tmp_path):
    model, meta = loaded
    path = primer_file(tmp_path / "p.mid", note(0, 20 * Q, 60))
    piece = compose(model, meta, Request(["baroque"], bars=1, primer=path, morph_to=["classical"]))[0]
    first = meta.styles.vector(["baroque"]).numpy()
    assert piece.primer_steps == 20 and piece.styles.shape == (36, meta.styles.num_styles)
    np.testing.assert_array_equal(piece.styles[:21], np.broadcast_to(first, (21, len(first))))
    np.testing.assert_array_equal(piece.styles[-1], meta.styles.vector(["classical"]).numpy())


# ------------------------------------------------------------------------------------------------ same pieces
def test_no_primer_no_morph_is_the_samplers_constant_style_call(loaded):
    """What the CLI did before compose existed: one (num, S) style, a generator on the device seeded with --seed."""
    model, meta = loaded
    pieces = compose(model, meta, Request(["bach=1", "mozart=0.5"], bars=2, num=3, seed=3, temperature=1.2))
    style = meta.styles.vector(["bach=1", "mozart=0.5"])
    old = generate(model, style.unsqueeze(0).expand(3, -1).contiguous(), SampleConfig(steps=32, temperature=1.2),
                   torch.Generator(device="cpu").manual_seed(3)).numpy()
    for piece, roll in zip(pieces, old):
        assert piece.primer_steps == 0
        np.testing.assert_array_equal(piece.roll, roll)
        np.testing.assert_array_equal(piece.notes, roll_to_notes(roll, meta.representation))


def test_cli_and_compose_give_the_same_pieces(loaded, trained_run, tmp_path, capsys):
    model, meta = loaded
    path = primer_file(tmp_path / "primer.mid", *PRIMER)
    out = tmp_path / "cli"
    argv = [str(trained_run), "--style", "baroque", "--bars", "2", "--num", "2", "--seed", "5", "--primer", str(path),
            "--primer-bars", "2", "--morph-to", "classical", "--morph-bars", "2:2", "--out", str(out)]
    assert cli.main(argv) == 0
    said = capsys.readouterr().out
    assert "first 20 steps" in said and "primer" in said and "morphing over bars 2-2" in said
    pieces = compose(model, meta, Request(["baroque"], bars=2, num=2, seed=5, primer=path, primer_bars=2,
                                          morph_to=["classical"], morph_bars=(2, 2)))
    for i, piece in enumerate(pieces):
        ours = write_midi(piece.notes, tmp_path / f"ours-{i}.mid")
        assert (out / f"piece-{i:02d}.mid").read_bytes() == ours.read_bytes()
        assert (out / f"piece-{i:02d}.png").stat().st_size > 0
    assert capsys.readouterr().out == ""  # compose never prints


def test_progress_is_reported_and_can_stop_the_work(loaded):
    model, meta = loaded
    calls = []
    compose(model, meta, Request(["baroque"], bars=1, silence_redraws=0), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 16), (8, 16), (12, 16), (16, 16)]

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        compose(model, meta, Request(["baroque"], bars=1), progress=cancel)


# ------------------------------------------------------------------------------------------------ bad input
def bad_primers(folder) -> dict:
    """name -> (path, primer_bars, what compose says)."""
    text = folder / "text.mid"
    text.write_text("MIDI? no: a text file named like one\n")
    (folder / "empty.mid").write_bytes(b"")
    long = primer_file(folder / "long.mid", *(note(16 * Q * k, 16 * Q * k + 4 * Q, 60) for k in range(65)))
    return {
        "not-midi": (text, None, f"primer {text} is not a MIDI file"),
        "empty": (folder / "empty.mid", None, f"primer {folder / 'empty.mid'} is empty"),
        "out-of-range": (primer_file(folder / "range.mid", note(0, 4 * Q, 20), note(0, 4 * Q, 100)), None,
                         "has no notes in the model's range, MIDI pitches [36, 84): its 2 notes lie in [20, 100]"),
        "drums": (primer_file(folder / "drums.mid", note(0, 4 * Q, 36, channel=DRUM), note(4 * Q, 8 * Q, 38, 90, DRUM)),
                  None, "has only drum notes (2 on the drum channel, MIDI channel 10)"),
        "no-notes": (write_spec(MidiSpec(tracks=[]), folder / "none.mid"), None, "none.mid holds no notes"),
        "too-long": (long, None, f"lasts 65 bars, more than the {MAX_PRIMER_BARS} a primer may last"),
        "missing": (folder / "absent.mid", None, f"primer {folder / 'absent.mid'} cannot be read (No such file"),
    }


def test_bad_primers_are_refused_by_name(loaded, tmp_path, trained_run, capsys):
    model, meta = loaded
    for name, (path, bars, said) in bad_primers(tmp_path).items():
        with pytest.raises(RequestError) as e:
            compose(model, meta, Request(["baroque"], bars=1, primer=path, primer_bars=bars))
        assert said in str(e.value) and e.value.field == "primer", (name, str(e.value))
        out = tmp_path / f"out-{name}"
        assert cli.main([str(trained_run), "--style", "baroque", "--primer", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: primer ") and said in err, (name, err)
        assert not out.exists()
    long = tmp_path / "long.mid"  # its last bars are a fine primer
    assert read_primer(long, meta, 4).shape == (3 * 16 + 4, 48, 3)


REFUSED = [  # (Request changes, what compose says, CLI options, what the CLI says)
    (dict(primer_bars=0, primer="p.mid"), "primer_bars must be a whole number from 1 to 64, got 0",
     ["--primer", "p.mid", "--primer-bars", "0"], "argument --primer-bars: must be an integer in [1, 64]"),
    (dict(primer_bars=65, primer="p.mid"), "primer_bars must be a whole number from 1 to 64, got 65",
     ["--primer", "p.mid", "--primer-bars", "65"], "argument --primer-bars: must be an integer in [1, 64]"),
    (dict(primer_bars=2), "primer_bars needs a primer", ["--primer-bars", "2"], "--primer-bars needs a primer"),
    (dict(continuation_only=True), "continuation_only needs a primer", ["--continuation-only"],
     "--continuation-only needs a primer"),
    (dict(morph_to=["classical"], morph_bars=(2, 5)), "morph_bars 2:5 must be bars of the generated part",
     ["--morph-to", "classical", "--morph-bars", "2:5"], "--morph-bars 2:5 must be bars of the generated part"),
    (dict(morph_to=["classical"], morph_bars=(3, 2)), "1 <= first <= last <= 4",
     ["--morph-to", "classical", "--morph-bars", "3:2"], "argument --morph-bars: must be FIRST:LAST"),
    (dict(morph_to=["classical"], morph_bars=(0, 2)), "1 <= first <= last <= 4",
     ["--morph-to", "classical", "--morph-bars", "0:2"], "argument --morph-bars: must be FIRST:LAST"),
    (dict(morph_bars=(1, 2)), "morph_bars needs morph_to", ["--morph-bars", "1:2"], "--morph-bars needs --morph-to"),
    (dict(styles=[], morph_to=["classical"]), "morph_to needs styles to start from", ["--morph-to", "classical"],
     "--morph-to needs --style to start from"),
    (dict(styles=["chopin"]), "unknown style 'chopin'; valid names: bach, baroque", ["--style", "chopin"],
     "error: unknown style 'chopin'; valid names: bach, baroque"),
    (dict(morph_to=["liszt"]), "morph_to: unknown style 'liszt'; valid names: bach, baroque",
     ["--morph-to", "liszt"], "--morph-to: unknown style 'liszt'; valid names: bach, baroque"),
]


@pytest.mark.parametrize("change, said, argv, cli_said", REFUSED, ids=[r[1][:30] for r in REFUSED])
def test_bad_requests_are_refused_by_name(loaded, trained_run, tmp_path, capsys, change, said, argv, cli_said):
    model, meta = loaded
    request = Request(["baroque"], bars=4)
    for key, value in change.items():
        setattr(request, key, value)
    with pytest.raises(RequestError) as e:
        compose(model, meta, request)
    assert said in str(e.value)
    out = tmp_path / "out"
    style = [] if "styles" in change else ["--style", "baroque"]
    try:
        code = cli.main([str(trained_run), *style, "--bars", "4", *argv, "--out", str(out)])
    except SystemExit as stop:  # argparse's refusals
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and cli_said in err and "Traceback" not in err, err
    assert not out.exists()


def test_page_limits_are_compose_defaults_and_the_cli_lifts_them(loaded):
    _, meta = loaded
    for change, said in ((dict(bars=MAX_BARS + 1), f"bars must be a whole number from 1 to {MAX_BARS}, got"),
                         (dict(num=MAX_PIECES + 1), f"num must be a whole number from 1 to {MAX_PIECES}, got"),
                         (dict(temperature=float("nan")), "temperature must be a finite number > 0, got nan"),
                         (dict(seed=-1), "seed must be a whole number from 0 to"),
                         (dict(silence_redraws=-1), "silence_redraws must be a whole number of at least 0"),
                         (dict(mode="greedy"), "mode must be one of 'stateful', 'window', 'paper', got 'greedy'")):
        with pytest.raises(RequestError) as e:
            check_request(meta, Request(["baroque"], **change))
        assert said in str(e.value) and e.value.field == next(iter(change))
    check_request(meta, Request(["baroque"], bars=MAX_BARS + 1, num=MAX_PIECES + 1), max_bars=None, max_pieces=None)


def test_a_bl2012_checkpoint_is_refused_at_start(tmp_path, capsys):
    from deepj.bench.bl2012 import BL2012Config, save_best

    cfg = BL2012Config()
    cfg.model = ModelConfig(num_notes=88, num_styles=1, play_only=True, style_dim=4, conv_filters=4, time_hidden=8,
                            note_hidden=8)
    ckpt = save_best(tmp_path / "bl", 1, DeepJ(cfg.model), cfg, "jsb", "0123")
    meta = CheckpointMeta.load(ckpt)
    with pytest.raises(RequestError, match="of kind 'bl2012', a BL2012 benchmark model") as e:
        check_checkpoint(meta)
    assert e.value.field == "checkpoint"
    with pytest.raises(RequestError, match="of kind 'bl2012'"):
        compose(DeepJ(cfg.model), meta, Request(["bl2012"]))
    out = tmp_path / "out"
    assert cli.main([str(tmp_path / "bl"), "--style", "bl2012", "--out", str(out)]) == 2
    assert f"error: {ckpt}: this checkpoint is of kind 'bl2012'" in capsys.readouterr().err
    assert not out.exists()
    meta.kind, meta.model.play_only = "train", True  # a play-only model that says it was trained: refused too
    with pytest.raises(RequestError, match="play-only"):
        check_checkpoint(meta)


def test_notes_dtype_of_pieces(loaded):
    model, meta = loaded
    piece = compose(model, meta, Request(["handel"], bars=1))[0]
    assert piece.notes.dtype == NOTE_DTYPE and piece.roll.dtype == np.float32
    assert int(piece.notes["end"].max(initial=0)) <= STEPS_PER_BAR
