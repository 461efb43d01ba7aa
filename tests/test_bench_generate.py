"""`python -m deepj.bench generate` on CPU with a tiny model: the JSON line, the same-seed check, the time guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import deepj.bench.generate as bench
from deepj.model import DeepJ, ModelConfig
from deepj.music.representation import ReprConfig
from deepj.music.styles import StyleTree
from deepj.training import checkpoint
from deepj.training.checkpoint import CheckpointMeta

TINY_MODEL = {"style_dim": 8, "conv_filters": 6, "conv_kernel": 5, "time_hidden": 16, "note_hidden": 12}
MODES = ["stateful", "stateful-eager", "window", "paper"]


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    """A config with a tiny [model] and no shards: N = 48, S = 14 (the benchmark's defaults)."""
    path = tmp_path / "tiny.toml"
    lines = [f'[data]\ndir = "{tmp_path / "no-shards"}"', "[model]"] + [f"{k} = {v}" for k, v in TINY_MODEL.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(capsys, *argv: str) -> tuple[int, dict, str]:
    code = bench.main(["--device", "cpu", "--bars", "1", "--repeats", "1", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out.strip().splitlines()[-1]), out


def test_every_mode_and_batch_timed_and_the_modes_sample_the_same_roll(tiny_config, capsys):
    code, report, out = run(capsys, "--config", str(tiny_config), "--batches", "1,2")
    assert code == 0
    check = report["check"]
    assert check["identical"] and "check: identical" in out
    assert check["batch"] == 1 and check["steps"] == 16  # min(1 bar, window 128)
    assert check["mismatched_notes"] == dict.fromkeys(MODES, 0)
    assert 0.1 < check["sounding_fraction"] < 0.9  # a random model plays and rests: the comparison means something
    assert report["num_notes"] == 48 and report["num_styles"] == 14 and report["steps"] == 16
    assert report["music_seconds_per_piece"] == 2.0  # 16 steps of a 16th note at 120 bpm
    assert report["machine"]["device"] == "cpu" and report["machine"]["torch"] == torch.__version__
    assert report["silence_redraws"] == 0  # the paper's sampling unless asked

    rows = report["results"]
    assert [(r["mode"], r["batch"]) for r in rows] == [(m, b) for b in (1, 2) for m in MODES]
    for r in rows:
        s = r["seconds_per_batch"]
        assert s > 0 and r["pieces_per_s"] == pytest.approx(r["batch"] / s, rel=1e-3)
        assert r["real_time_factor"] == pytest.approx(r["batch"] * 2.0 / s, rel=1e-3)
        assert r["cuda_graph"] is False and r["capture_s"] == 0.0  # no graph on CPU
    assert [u["batch"] for u in report["speedups"]] == [1, 2]
    seconds = {(r["mode"], r["batch"]): r["seconds_per_batch"] for r in rows}
    for u in report["speedups"]:
        b = u["batch"]
        for key, mode in (("stateful_over_paper", "paper"), ("stateful_over_window", "window"),
                          ("stateful_over_eager", "stateful-eager")):
            assert u[key] == pytest.approx(seconds[(mode, b)] / seconds[("stateful", b)], abs=0.006)


def test_a_mode_that_samples_differently_fails_the_check(tiny_config, capsys, monkeypatch):
    real = bench.generate

    def off_by_one_note(model, style, scfg, gen, stats=None):
        roll = real(model, style, scfg, gen, stats)
        if scfg.mode == "paper":
            roll[0, 3, 7, 0] = 1 - roll[0, 3, 7, 0]
        return roll

    monkeypatch.setattr(bench, "generate", off_by_one_note)
    code, report, out = run(capsys, "--config", str(tiny_config), "--batches", "1", "--modes", "stateful")
    assert code == 1 and "check: MISMATCH" in out
    assert not report["check"]["identical"]
    assert report["check"]["mismatched_notes"] == {"stateful": 0, "stateful-eager": 0, "window": 0, "paper": 1}


def test_max_seconds_skips_what_the_probe_predicts_too_slow(tiny_config, capsys):
    code, report, out = run(capsys, "--config", str(tiny_config), "--batches", "2", "--modes", "stateful,paper",
                            "--max-seconds", "1e-6")
    assert code == 0
    assert out.count("skipped (predicted") == 2
    assert all(r["skipped"] and r["predicted_s"] > 0 and "seconds_per_batch" not in r for r in report["results"])
    assert report["speedups"] == [{"batch": 2, "stateful_over_paper": None, "stateful_over_window": None,
                                   "stateful_over_eager": None}]


def test_prediction_recovers_a_per_step_cost_that_grows_with_the_window():
    a, b, window = 0.004, 0.0002, 128

    def cost(steps):  # exact seconds of `steps` steps under the model the guard assumes
        return a * steps + b * sum(min(t + 1, window) for t in range(steps))

    assert bench.window_work(20, 8) == sum(min(t + 1, 8) for t in range(20))
    assert bench.predict_seconds([(16, cost(16)), (32, cost(32))], 512, window) == pytest.approx(cost(512))
    assert bench.predict_seconds([(16, 0.8)], 512, None) == pytest.approx(25.6)  # stateful: linear
    # noise that makes the fit's window term negative falls back to a per-step cost from the longer probe
    assert bench.predict_seconds([(16, 1.0), (32, 1.5)], 64, window) == pytest.approx(1.5 / 32 * 64)


def test_a_trained_checkpoint_is_timed_with_its_own_sizes(tmp_path, capsys):
    mcfg = ModelConfig(num_notes=24, num_styles=3, **TINY_MODEL)
    model = DeepJ(mcfg)
    meta = CheckpointMeta(step=7, world_size=1, kind="train", backend="ddp", model=mcfg,
                          styles=StyleTree.from_leaves(["a/x", "a/y", "b/z"]), representation=ReprConfig(36, 60),
                          manifest_hash="0" * 16, config={})
    ckpt = checkpoint.save(tmp_path / "run", 7, {"engine": {"model": model.state_dict()}}, {}, keep=1, meta=meta)
    code, report, _ = run(capsys, "--run", str(tmp_path / "run"), "--batches", "1", "--modes", "stateful")
    assert code == 0 and report["check"]["identical"]
    assert report["run"] == str(ckpt) and report["step"] == 7
    assert report["num_notes"] == 24 and report["num_styles"] == 3 and report["model_params"] == model.num_params()
    assert "config" not in report


def test_modes_sample_the_same_roll_with_silence_redraws_too(tiny_config, capsys):
    code, report, _ = run(capsys, "--config", str(tiny_config), "--batches", "2", "--modes", "stateful",
                          "--silence-redraws", "3")
    assert code == 0 and report["check"]["identical"] and report["silence_redraws"] == 3


def test_bad_arguments_are_refused(capsys):
    for argv in (["--modes", "stateful,greedy"], ["--batches", "0"], ["--run", "x", "model.time_hidden=8"],
                 ["--silence-redraws", "-1"]):
        with pytest.raises(SystemExit) as e:
            bench.main(["--device", "cpu", *argv])
        assert e.value.code == 2
    assert "unknown mode(s) greedy" in capsys.readouterr().err
