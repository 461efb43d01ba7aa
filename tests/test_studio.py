"""The studio without a browser: slider weights -> style specs, the page's bounds, bad primers (a message naming the
problem, and the next request still works), a job's files, the page without audio, and the command's refusals
(a BL2012 model, a port in use). tests/test_studio_browser.py drives the page itself."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch
from conftest import run_cli

pytest.importorskip("gradio", reason="the studio needs gradio: pip install -e '.[studio]'")

from deepj.bench.bl2012 import BL2012Config, save_best  # noqa: E402
from deepj.compose import MAX_BARS, MAX_PIECES, MAX_PRIMER_BARS, RequestError  # noqa: E402
from deepj.model import DeepJ, ModelConfig  # noqa: E402
from deepj.music.midi_io import read_midi  # noqa: E402
from deepj.music.styles import StyleTree  # noqa: E402
from deepj.studio.jobs import (  # noqa: E402
    MAX_SILENCE_REDRAWS,
    Form,
    Studio,
    describe_mix,
    find_styles,
    morph_span,
    slider_names,
    specs_from_weights,
    style_groups,
)
from deepj.training.checkpoint import load_model  # noqa: E402

TREE = StyleTree.from_leaves(["baroque/bach", "baroque/handel", "classical/mozart"])


@pytest.fixture(scope="module")
def studio(trained_run, tmp_path_factory) -> Studio:
    model, meta, ckpt = load_model(trained_run)
    return Studio(model, meta, ckpt, tmp_path_factory.mktemp("studio"))


def write_midi_file(path: Path, notes: list[tuple[int, float, float]], drums: bool = False, tempo: float = 120.0):
    """(pitch, start s, end s) notes in one track (a drum track with `drums`)."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    inst = pretty_midi.Instrument(program=0, is_drum=drums)
    inst.notes = [pretty_midi.Note(80, p, s, e) for p, s, e in notes]
    pm.instruments.append(inst)
    pm.write(str(path))
    return path


# ---------------------------------------------------------------------------------------------- sliders -> specs
def test_sliders_grouped_by_period_then_composer():
    assert style_groups(TREE) == [("baroque", ["baroque/bach", "baroque/handel"]), ("classical", ["classical/mozart"])]
    assert slider_names(TREE) == ["baroque", "baroque/bach", "baroque/handel", "classical", "classical/mozart"]
    flat = StyleTree.from_leaves(["jazz", "rock"])  # no periods: one slider per style, no composer lists
    assert style_groups(flat) == [("jazz", []), ("rock", [])]


def test_search_finds_composers_by_their_name_or_their_period():
    assert find_styles(TREE, " Han") == {"baroque/bach": False, "baroque/handel": True, "classical/mozart": False}
    assert find_styles(TREE, "baroque") == {"baroque/bach": True, "baroque/handel": True, "classical/mozart": False}
    assert all(find_styles(TREE, "").values()) and not any(find_styles(TREE, "chopin").values())


def test_weights_become_specs_normalised_like_the_style_option():
    weights = {"baroque": 1.0, "baroque/bach": 0.5, "baroque/handel": 0.0, "classical": 0.0, "classical/mozart": 0.5}
    specs = specs_from_weights(weights)
    assert specs == ["baroque=1", "baroque/bach=0.5", "classical/mozart=0.5"]  # the zero ones left out
    # The vector the CLI makes of `--style baroque --style bach=0.5 --style mozart=0.5`.
    cli = TREE.vector(["baroque", "bach=0.5", "mozart=0.5"])
    assert torch.allclose(TREE.vector(specs), cli)
    assert torch.allclose(cli, torch.tensor([0.25 + 0.25, 0.25, 0.25]))
    assert describe_mix(specs) == "baroque 50% + baroque/bach 25% + classical/mozart 25%"


def test_all_zero_weights_are_refused():
    with pytest.raises(RequestError, match="every style weight is zero: move at least one slider"):
        specs_from_weights(dict.fromkeys(slider_names(TREE), 0.0))
    with pytest.raises(RequestError, match="every morph target weight is zero"):
        Form(weights={"baroque": 1}, morph=True, morph_weights={"classical": 0}).to_request()
    with pytest.raises(RequestError, match="weight of 'baroque' must be a finite number >= 0"):
        specs_from_weights({"baroque": float("nan")})


# ---------------------------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("field, value, message", [
    ("bars", MAX_BARS + 1, f"bars must be a whole number in \\[1, {MAX_BARS}\\]"),
    ("bars", 0, "bars must be"),
    ("bars", 2.5, "bars must be"),
    ("pieces", MAX_PIECES + 1, f"pieces must be a whole number in \\[1, {MAX_PIECES}\\]"),
    ("temperature", 0, "temperature must be a finite number > 0"),
    ("temperature", float("inf"), "temperature must be"),
    ("temperature", None, "temperature must be"),
    ("seed", -1, "seed must be"),
    ("silence_redraws", MAX_SILENCE_REDRAWS + 1, "silence redraws must be"),
    ("primer_bars", MAX_PRIMER_BARS + 1, f"primer bars must be a whole number in \\[1, {MAX_PRIMER_BARS}\\]"),
    ("morph_to", 0, "morph to bar must be"),
    ("morph_to", 33, "morph to bar must be a whole number in \\[1, 32\\] \\(the bars generated\\)"),
])
def test_bounds_are_refused_with_the_field_named(field, value, message):
    form = Form(weights={"baroque": 1}, primer="x.mid", morph=True, morph_weights={"classical": 1})
    setattr(form, field, value)
    with pytest.raises(RequestError, match=message):
        form.to_request()


def test_a_form_within_bounds_becomes_the_request():
    form = Form(weights={"baroque": 1, "classical": 0}, bars=MAX_BARS, pieces=MAX_PIECES, temperature=1.5, seed=7.0,
                silence_redraws=0, primer="p.mid", primer_bars=4, morph=True, morph_weights={"classical": 2},
                morph_from=2, morph_to=6)
    req = form.to_request()
    assert (req.styles, req.bars, req.num, req.temperature, req.seed, req.silence_redraws) == \
        (["baroque=1"], MAX_BARS, MAX_PIECES, 1.5, 7, 0)
    assert (req.primer, req.primer_bars, req.morph_to, req.morph_bars) == ("p.mid", 4, ["classical=2"], (2, 6))
    assert Form(weights={"baroque": 1}, primer="p.mid", primer_all=True).to_request().primer_bars is None
    with pytest.raises(RequestError, match="the second must not come first"):
        Form(weights={"baroque": 1}, morph=True, morph_weights={"classical": 1}, morph_from=5, morph_to=2).to_request()
    with pytest.raises(RequestError, match="needs a primer"):
        Form(weights={"baroque": 1}, continuation_only=True).to_request()


def test_morph_span_finds_the_steps_where_the_style_moves():
    styles = np.zeros((64, 2), np.float32)
    styles[:, 0] = 1.0
    styles[16:33, 0] = np.linspace(1, 0, 17)  # moves over steps 16..32
    styles[33:, 0] = 0.0
    styles[:, 1] = 1 - styles[:, 0]
    assert morph_span(styles) == (16, 33)
    assert morph_span(np.ones((8, 2))) is None


# ---------------------------------------------------------------------------------------------- jobs on the model
def test_bad_primers_are_named_and_the_next_request_works(studio, tmp_path):
    empty = tmp_path / "empty.mid"
    empty.write_bytes(b"")
    text = tmp_path / "text.mid"
    text.write_text("not a MIDI file\n")
    high = write_midi_file(tmp_path / "high.mid", [(100, 0, 1), (105, 1, 2)])  # above the model's range
    drums = write_midi_file(tmp_path / "drums.mid", [(36, 0, 0.5), (38, 0.5, 1)], drums=True)
    # 0.125 s steps at 120 bpm: a note ending after MAX_PRIMER_BARS + 1 bars makes the file longer than the limit.
    long_end = (MAX_PRIMER_BARS + 1) * 16 * 0.125
    long = write_midi_file(tmp_path / "long.mid", [(60, 0, 1), (62, long_end - 1, long_end)])
    for path in (empty, text, high, drums, long):
        with pytest.raises(RequestError) as e:
            studio.run(Form(weights={"baroque": 1}, bars=1, primer=str(path), primer_all=True))
        assert path.name in str(e.value), f"{path.name}: {e.value}"
    res = studio.run(Form(weights={"baroque": 1}, bars=1))
    assert len(res.pieces) == 1 and res.pieces[0].midi.is_file()


def test_a_job_continues_the_primer_and_writes_its_files(studio, tmp_path):
    primer = write_midi_file(tmp_path / "primer.mid", [(60, 0, 0.5), (64, 0.5, 1.0), (67, 1.0, 2.0)])  # 1 bar
    res = studio.run(Form(weights={"baroque/bach": 1, "classical/mozart": 1}, bars=2, pieces=2, seed=3,
                          primer=str(primer), primer_all=True))
    assert "baroque/bach 50% + classical/mozart 50%" in res.summary
    assert len(res.pieces) == 2
    want = read_midi(primer, studio.meta.representation)
    for piece in res.pieces:
        notes = read_midi(piece.midi, studio.meta.representation)
        head = notes[notes["start"] < 16]
        assert sorted(zip(head["pitch"].tolist(), head["start"].tolist())) == \
            sorted(zip(want["pitch"].tolist(), want["start"].tolist()))
        assert piece.png.is_file() and "primer" in piece.caption
        assert (piece.wav is not None and piece.wav.read_bytes()[:4] == b"RIFF") == studio.audio


def test_jobs_asked_for_at_once_run_one_after_the_other_and_none_is_lost(studio):
    results, errors = [], []

    def ask(seed: int) -> None:
        try:
            results.append(studio.run(Form(weights={"baroque": 1}, bars=1, seed=seed)))
        except Exception as e:  # noqa: BLE001 (any failure of a thread is the test's failure)
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 3
    jobs = sorted(r.job for r in results)
    assert jobs == list(range(jobs[0], jobs[0] + 3))  # three distinct jobs, each with its own files
    assert len({r.pieces[0].midi for r in results}) == 3


def test_without_fluidsynth_the_page_says_how_to_get_audio(trained_run, tmp_path, monkeypatch):
    from deepj.studio.page import _header

    monkeypatch.setenv("PATH", str(tmp_path))  # no fluidsynth on it
    model, meta, ckpt = load_model(trained_run)
    studio = Studio(model, meta, ckpt, tmp_path / "out")
    assert not studio.audio
    assert "apt-get install fluidsynth fluid-soundfont-gm" in _header(studio)
    res = studio.run(Form(weights={"classical": 1}, bars=1))
    assert res.pieces[0].wav is None and res.pieces[0].midi.is_file()


# ---------------------------------------------------------------------------------------------- the command
def test_help_describes_the_studio():
    res = run_cli("-m", "deepj.studio", "--help")
    assert res.returncode == 0
    assert "local web page" in res.stdout and "--port" in res.stdout and "--host" in res.stdout


def test_a_bl2012_checkpoint_is_refused_at_start(tmp_path):
    cfg = BL2012Config()
    cfg.model = ModelConfig(num_notes=88, num_styles=1, play_only=True, style_dim=4, conv_filters=4,
                            time_hidden=8, note_hidden=8)
    save_best(tmp_path / "bl", 1, DeepJ(cfg.model), cfg, "jsb", "0" * 16)
    res = run_cli("-m", "deepj.studio", str(tmp_path / "bl"), timeout=120)
    assert res.returncode == 2, res.stderr
    assert "bl2012" in res.stderr.lower() and "Running on" not in res.stdout + res.stderr


def test_missing_checkpoint_and_busy_port_are_refused(trained_run, tmp_path):
    res = run_cli("-m", "deepj.studio", str(tmp_path / "nothing"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run_cli("-m", "deepj.studio", str(trained_run), "--port", str(port), timeout=120)
    assert res.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in res.stderr, res.stderr


def test_the_page_and_the_cli_give_the_same_pieces_for_one_seed(studio, trained_run, tmp_path):
    """A job of the page and `deepj.generate` with the same styles, morph, primer and seed write the same notes."""
    from deepj import generate

    primer = write_midi_file(tmp_path / "primer.mid", [(60, 0, 0.5), (64, 0.5, 1.0), (67, 1.0, 2.0)])
    res = studio.run(Form(weights={"baroque/bach": 1}, bars=2, pieces=2, seed=11, primer=str(primer),
                          primer_all=True, morph=True, morph_weights={"classical/mozart": 1}, morph_from=1,
                          morph_to=2))
    out = tmp_path / "cli"
    assert generate.main([str(trained_run), "--style", "baroque/bach=1", "--bars", "2", "--num", "2", "--seed", "11",
                          "--primer", str(primer), "--morph-to", "classical/mozart=1", "--morph-bars", "1:2",
                          "--out", str(out)]) == 0
    for i, piece in enumerate(res.pieces):
        page, cli = (read_midi(p, studio.meta.representation) for p in (piece.midi, out / f"piece-{i:02d}.mid"))
        assert page.tolist() == cli.tolist() and len(page) > 0
