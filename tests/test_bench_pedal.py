"""`python -m deepj.bench pedal`, end to end on small real MIDI files: the figures it reports are the ones the files
hold."""

from __future__ import annotations

import json

import pytest
from midi_files import MidiSpec, Q, cc, note, track, write_spec

from deepj.bench import pedal


def test_bench_pedal_reports_what_the_files_hold(tmp_path, capsys):
    perf, score = tmp_path / "perf", tmp_path / "score"
    for d in (perf / "sub", score):
        d.mkdir(parents=True)
    # Four one-step notes, one every 4 steps, under one pedal lifted at step 16.
    notes = [note(4 * i * Q, (4 * i + 1) * Q, 60 + i) for i in range(4)]
    write_spec(MidiSpec([track(cc(0, 64, 127), *notes, cc(16 * Q, 64, 0))]), perf / "a.mid")
    # An onset off the grid by 1/4 step (31.25 ms at 120 bpm), one on it, and one 11/24 of a step after the
    # second, of the same pitch: rounded into its step (merged) on the 16th grid, into the next on the 32nd.
    write_spec(MidiSpec([track(note(Q // 4, Q, 62), note(2 * Q, 2 * Q + Q // 4, 64), note(2 * Q + Q // 2 - 1,
                                                                                          4 * Q, 64))]),
               perf / "sub" / "b.mid")
    write_spec(MidiSpec([track(*[note(4 * i * Q, (4 * i + 4) * Q, 60 + i) for i in range(4)])]), score / "a.mid")
    (tmp_path / "pairs.tsv").write_text("# performance\tscore\nperf/a.mid\tscore/a.mid\tsame piece\n")
    out = tmp_path / "figures.json"
    assert pedal.main([str(perf), "--pairs", str(tmp_path / "pairs.tsv"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "**all**: 2 performances" in printed and "**sub**" in printed
    res = json.loads(out.read_text())
    a = next(r for r in res["files"] if r["file"] == "a.mid")
    assert a["polyphony no pedal"] == pytest.approx(4 / 13)  # 4 one-step notes over 13 steps
    # with the pedal each note sounds to step 16: (16 + 12 + 8 + 4) / 16
    assert a["polyphony sustain"] == pytest.approx(40 / 16) and a["median_steps sustain"] == 10
    assert a["median_ms no pedal"] == pytest.approx(125) and a["step_ms"] == pytest.approx(125)
    b = next(r for r in res["files"] if r["file"] == "b.mid")
    assert b["merged 16th"] == 1 and b["merged 32nd"] == 0
    assert b["onset_moved_ms 16th"] == pytest.approx((31.25 + 0 + 11 / 24 * 125) / 3)
    (pair,) = res["pairs"]
    assert pair["score polyphony"] == pytest.approx(1.0) and pair["score median_ms"] == pytest.approx(500)
