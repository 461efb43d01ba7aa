"""`python -m deepj.generate`: valid MIDI of the requested length in range, by style name and blend, continuing a MIDI
file; clear errors (the primer's and morph's refusals: tests/test_compose.py)."""

from __future__ import annotations

from pathlib import Path

import pretty_midi
from conftest import run_cli
from midi_files import MidiSpec, Q, note, track, write_spec

from deepj.music.midi_io import read_midi
from deepj.music.representation import ReprConfig


def generate(run: Path, out: Path, *args: str):
    return run_cli("-m", "deepj.generate", str(run), "--out", str(out), *args)


def test_by_style_name_at_every_level(trained_run, tmp_path):
    for name in ("baroque", "bach", "baroque/bach", "classical"):
        res = generate(trained_run, tmp_path / name, "--style", name, "--bars", "2", "--num", "2")
        assert res.returncode == 0, res.stderr
        mids = sorted((tmp_path / name).glob("*.mid"))
        pngs = sorted((tmp_path / name).glob("*.png"))
        assert len(mids) == 2 and len(pngs) == 2


def test_midi_is_valid_in_range_and_of_requested_length(trained_run, tmp_path):
    res = generate(trained_run, tmp_path, "--style", "bach=0.5", "--style", "mozart=0.5", "--bars", "3",
                   "--temperature", "1.5", "--seed", "3")
    assert res.returncode == 0, res.stderr
    assert "baroque/bach=0.50" in res.stdout and "classical/mozart=0.50" in res.stdout
    mid = tmp_path / "piece-00.mid"
    pm = pretty_midi.PrettyMIDI(str(mid))  # parses: a valid file
    notes = [n for inst in pm.instruments for n in inst.notes]
    assert notes, "a temperature-1.5 sample of 3 bars should hold notes"
    cfg = ReprConfig()  # the debug corpus uses the default range
    assert all(cfg.min_pitch <= n.pitch < cfg.max_pitch for n in notes)
    # 3 bars at 120 bpm = 12 beats = 6 s; nothing may end after the last step.
    assert max(n.end for n in notes) <= 6.0 + 1e-6
    grid = read_midi(mid, cfg)
    assert int(grid["end"].max()) <= 48


def test_same_seed_same_piece(trained_run, tmp_path):
    a = generate(trained_run, tmp_path / "a", "--style", "baroque", "--bars", "2", "--seed", "7")
    b = generate(trained_run, tmp_path / "b", "--style", "baroque", "--bars", "2", "--seed", "7")
    assert a.returncode == b.returncode == 0
    assert (tmp_path / "a/piece-00.mid").read_bytes() == (tmp_path / "b/piece-00.mid").read_bytes()


def test_unknown_style_lists_valid_names(trained_run, tmp_path):
    res = generate(trained_run, tmp_path, "--style", "chopin")
    assert res.returncode == 2
    assert "unknown style 'chopin'" in res.stderr and "baroque" in res.stderr and "mozart" in res.stderr


def test_negative_silence_redraws_is_refused(trained_run, tmp_path):
    res = generate(trained_run, tmp_path, "--style", "baroque", "--silence-redraws", "-1")
    assert res.returncode == 2 and "--silence-redraws" in res.stderr


def test_missing_checkpoint_is_clear(tmp_path):
    res = generate(tmp_path / "no-such-run", tmp_path / "out", "--style", "baroque")
    assert res.returncode == 2
    assert "does not exist" in res.stderr


def test_run_without_complete_checkpoint_is_clear(tmp_path):
    (tmp_path / "run" / "step-00000010.tmp").mkdir(parents=True)
    (tmp_path / "run" / "step-00000005").mkdir()
    res = generate(tmp_path / "run", tmp_path / "out", "--style", "baroque")
    assert res.returncode == 2
    assert "no complete checkpoint" in res.stderr and "COMPLETE" in res.stderr


def test_primer_and_morph_as_a_user_runs_them(trained_run, tmp_path):
    primer = write_spec(MidiSpec([track(note(0, 8 * Q, 60), note(8 * Q, 20 * Q, 64, 70))]), tmp_path / "mine.mid")
    res = generate(trained_run, tmp_path / "out", "--style", "baroque", "--morph-to", "classical", "--bars", "2",
                   "--primer", str(primer), "--morph-bars", "1:2")
    assert res.returncode == 0, res.stderr
    assert "first 20 steps (1.25 bars) are the primer" in res.stdout and "morphing over bars 1-2" in res.stdout
    grid = read_midi(tmp_path / "out" / "piece-00.mid", ReprConfig())
    first = grid[grid["start"] < 20]
    assert [(n["pitch"], n["start"]) for n in first] == [(60, 0), (64, 8)]  # the primer, then the continuation
    assert int(grid["end"].max()) <= 20 + 32
    res = generate(trained_run, tmp_path / "bad", "--style", "baroque", "--primer", str(tmp_path / "out"))
    assert res.returncode == 2 and "is not a MIDI file" not in res.stderr and "cannot be read" in res.stderr
    assert not (tmp_path / "bad").exists()
