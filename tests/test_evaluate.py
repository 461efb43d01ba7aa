"""`deepj.evaluate`: the NLL terms against hand-computed values, a full pass that scores every step of the split once,
the report files and TensorBoard figures, and clear refusals."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from deepj.data.manifest import Manifest
from deepj.data.shards import NOTES_KEY, decode_notes
from deepj.evaluate import EvalError, NLLAccumulator, check_compatible, evaluate, run_seq_len, style_map
from deepj.model import ModelConfig
from deepj.music.constants import PLAY, REPLAY, VOLUME
from deepj.music.representation import ReprConfig, notes_to_roll
from deepj.music.styles import StyleTree
from deepj.training.checkpoint import CheckpointMeta, load_model


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def bernoulli_nll(z: float, y: float) -> float:
    """-[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))] = softplus(z) - y z."""
    return softplus(z) - y * z


# ------------------------------------------------------------------------------------------- by hand
def test_accumulator_terms_by_hand():
    """Two windows of 2 steps x 3 notes, the second window's last step padding; fixed outputs."""
    target = torch.zeros(2, 2, 3, 3)
    target[0, 0, 0] = torch.tensor([1.0, 1.0, 0.5])  # played, replayed, volume 0.5
    target[0, 1, 2] = torch.tensor([1.0, 0.0, 1.0])  # played, volume 1.0
    target[1, 0, 1] = torch.tensor([1.0, 0.0, 0.25])
    target[1, 1, :] = torch.tensor([1.0, 1.0, 1.0])  # padding: must not count
    out = torch.zeros(2, 2, 3, 3)
    out[..., PLAY], out[..., REPLAY], out[..., VOLUME] = -1.0, 2.0, 0.75
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    beat = torch.tensor([[0, 1], [5, 6]])
    acc = NLLAccumulator(num_notes=3, play_only=False)
    acc.add(out, target, beat, mask)
    res = acc.result()

    frames, note_steps = 3, 9  # 3 scored steps x 3 notes
    played = [(1.0, 0.5), (0.0, 1.0), (0.0, 0.25)]  # (replay, volume) of the 3 played note-steps
    play = 3 * bernoulli_nll(-1.0, 1.0) + 6 * bernoulli_nll(-1.0, 0.0)
    replay = sum(bernoulli_nll(2.0, r) for r, _ in played)
    volume = sum((0.75 - v) ** 2 for _, v in played)
    assert res["play_nll_per_note_step"] == pytest.approx(play / note_steps, rel=1e-12)
    assert res["play_nll_per_frame"] == pytest.approx(play / frames, rel=1e-12)
    assert res["replay_nll_per_note_step"] == pytest.approx(replay / note_steps, rel=1e-12)
    assert res["replay_nll_per_frame"] == pytest.approx(replay / frames, rel=1e-12)
    assert res["replay_nll_per_played_note"] == pytest.approx(replay / 3, rel=1e-12)
    assert res["volume_mse"] == pytest.approx(volume / 3, rel=1e-12)
    assert res["volume_sq_error_per_frame"] == pytest.approx(volume / frames, rel=1e-12)
    assert res["total_nll_per_frame"] == pytest.approx((play + replay) / frames, rel=1e-12)
    assert res["total_nll_per_note_step"] == pytest.approx((play + replay) / note_steps, rel=1e-12)
    assert res["counts"] == {"windows": 2, "frames": 3, "note_steps": 9, "played_note_steps": 3}
    # per pitch: note 0 was played once in 3 scored steps
    pitch = acc.profile(acc.pitch)
    want0 = (bernoulli_nll(-1.0, 1.0) + 2 * bernoulli_nll(-1.0, 0.0)) / 3
    assert pitch["play_nll"][0] == pytest.approx(want0, rel=1e-12)
    assert pitch["played"] == [1, 1, 1] and pitch["note_steps"] == [3, 3, 3]
    beat_prof = acc.profile(acc.beat)
    assert beat_prof["note_steps"][0] == 3 and beat_prof["note_steps"][6] == 0 and beat_prof["play_nll"][6] is None
    assert beat_prof["volume_mse"][1] == pytest.approx((0.75 - 1.0) ** 2, rel=1e-12)


def test_play_only_reports_play_alone():
    acc = NLLAccumulator(num_notes=2, play_only=True)
    acc.add(torch.zeros(1, 1, 2, 3), torch.ones(1, 1, 2, 3), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1))
    res = acc.result()
    assert res["play_nll_per_frame"] == pytest.approx(2 * math.log(2)) == res["total_nll_per_frame"]
    assert res["replay_nll_per_frame"] is None and res["volume_mse"] is None


def test_nothing_scored_is_an_error():
    acc = NLLAccumulator(num_notes=2, play_only=False)
    acc.add(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2))
    with pytest.raises(EvalError, match="no step was scored"):
        acc.result()


def test_style_map_by_name_and_refusal():
    m = style_map(["a/x", "a/y", "b/z"], ["b/z", "a/x"])
    assert m.tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(EvalError, match="not trained with: c/w"):
        style_map(["a/x"], ["c/w"])


def _meta(styles=("baroque/bach", "folk/essen"), pitches=(36, 84), kind="train", config=None) -> CheckpointMeta:
    return CheckpointMeta(step=1, world_size=1, kind=kind, backend="ddp", model=ModelConfig(num_styles=len(styles)),
                          styles=StyleTree.from_leaves(list(styles)), representation=ReprConfig(*pitches),
                          manifest_hash="0" * 16, config=config or {})


def test_check_compatible_names_both_folders_and_what_differs():
    manifest = Manifest(dir=Path("shards/x"), representation=ReprConfig(36, 84),
                        styles=StyleTree.from_leaves(["baroque/bach", "folk/essen"]), shards=(), totals={},
                        settings={})
    check_compatible(_meta(), manifest, "runs/a/step-00000004")  # the same range and styles: fine
    check_compatible(_meta(styles=("baroque/bach", "folk/essen", "x/y")), manifest)  # more styles: fine
    with pytest.raises(EvalError, match=r"refusing: the checkpoint runs/a/step-00000004 models MIDI pitches "
                                        r"\[21, 109\), the shards in shards/x hold \[36, 84\)"):
        check_compatible(_meta(pitches=(21, 109)), manifest, "runs/a/step-00000004")
    with pytest.raises(EvalError, match=r"shards in shards/x hold style\(s\) that the checkpoint was not trained "
                                        r"with: folk/essen \(its styles: baroque/bach\)"):
        check_compatible(_meta(styles=("baroque/bach",)), manifest)


def test_run_seq_len_reads_the_training_window_of_train_runs_only():
    assert run_seq_len(_meta(config={"data": {"seq_len": 64}})) == 64
    assert run_seq_len(_meta(config={})) == 128
    assert run_seq_len(_meta(kind="bl2012", config={"data": {"beat_period": 16}}), 32) == 32


# ------------------------------------------------------------------------------------------- a real run
# `trained_run` is the session's 4-step debug run (tests/conftest.py).
def split_rolls(shards: Path, split: str) -> list[np.ndarray]:
    """Every piece of a split as a full (T, N, 3) roll, read straight from the tars, in manifest order."""
    manifest = Manifest.load(shards)
    rolls = []
    blobs = []
    for entry in manifest.split(split):
        with tarfile.open(shards / entry.name) as tar:
            blobs += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith("." + NOTES_KEY)]
    for blob, steps in zip(blobs, manifest.piece_steps(split).tolist(), strict=True):
        rolls.append(notes_to_roll(decode_notes(blob), manifest.representation, 0, steps))
    return rolls


class FixedOutputs(torch.nn.Module):
    """Stands in for DeepJ's forward with constant outputs, keeping its config (the evaluator reads cfg)."""

    def __init__(self, cfg, play: float, replay: float, volume: float):
        super().__init__()
        self.cfg, self.values = cfg, (play, replay, volume)

    def forward(self, prev, target, beat, style):
        assert style.shape[1] == self.cfg.num_styles
        return torch.tensor(self.values).expand_as(target).clone()


@pytest.mark.slow
@pytest.mark.parametrize("seq_len", [40, 128])  # 40: pieces cut into windows with a tail; 128: padded windows
def test_full_pass_scores_each_step_once_by_hand(trained_run, tiny_shards, seq_len):
    """A full pass with constant outputs equals the value computed from the pieces themselves: every step of every
    window of stride = seq_len counted once, padding and the wrapped tail of the last batch excluded."""
    model, meta, _ = load_model(trained_run)
    fixed = FixedOutputs(model.cfg, -2.0, 0.5, 0.6)
    res = evaluate(fixed, meta, tiny_shards, "val", seq_len=seq_len, batch_size=5)
    play = replay = volume = 0.0
    frames = played_n = windows = 0
    for roll in split_rolls(tiny_shards, "val"):
        t = len(roll)
        n_win = max(1, (t - seq_len) // seq_len + 1)
        scored = roll[: min(t, n_win * seq_len)]  # windows at 0, L, 2L, ...; a short piece is one padded window
        windows += n_win
        frames += len(scored)
        y = scored[..., PLAY]
        on = y > 0.5
        play += float((softplus(-2.0) + 2.0 * y).sum())  # softplus(z) - y z at z = -2
        replay += float((softplus(0.5) - 0.5 * scored[..., REPLAY])[on].sum())
        volume += float(((0.6 - scored[..., VOLUME]) ** 2)[on].sum())
        played_n += int(on.sum())
    n = model.cfg.num_notes
    assert res["counts"] == {"windows": windows, "frames": frames, "note_steps": frames * n,
                             "played_note_steps": played_n}
    assert res["play_nll_per_frame"] == pytest.approx(play / frames, rel=1e-6)
    assert res["play_nll_per_note_step"] == pytest.approx(play / (frames * n), rel=1e-6)
    assert res["replay_nll_per_played_note"] == pytest.approx(replay / played_n, rel=1e-6)
    assert res["total_nll_per_frame"] == pytest.approx((play + replay) / frames, rel=1e-6)
    assert res["volume_mse"] == pytest.approx(volume / played_n, rel=1e-5)
    # --batches N: exactly N micro-batches
    some = evaluate(fixed, meta, tiny_shards, "val", seq_len=seq_len, batch_size=2, batches=1)
    assert some["counts"]["windows"] == 2 and some["mode"] == "1 batches"


@pytest.mark.slow
def test_cli_writes_report_plots_and_tensorboard(trained_run, tiny_shards):
    res = run_cli("-m", "deepj.evaluate", str(trained_run), "--data", str(tiny_shards), "--split", "val")
    assert res.returncode == 0, res.stderr
    assert "NLL nats/frame: play" in res.stdout
    report = json.loads((trained_run / "eval-val.json").read_text())
    assert report["split"] == "val" and report["mode"] == "full pass" and report["same_corpus_as_training"] is True
    for key in ("play_nll_per_frame", "replay_nll_per_frame", "total_nll_per_frame", "volume_mse"):
        assert report[key] is not None and math.isfinite(report[key]) and report[key] >= 0
    assert report["total_nll_per_frame"] == pytest.approx(report["play_nll_per_frame"] + report["replay_nll_per_frame"])
    assert len(report["per_pitch"]["play_nll"]) == 48 and len(report["per_beat"]["play_nll"]) == 16
    md = (trained_run / "eval-val.md").read_text()
    assert "not a likelihood" in md and "eval-val-per_pitch.png" in md
    for name in ("eval-val-per_pitch.png", "eval-val-per_beat.png"):
        assert (trained_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(trained_run / "tb"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    assert "eval/val/per_pitch" in tags["images"] and "eval/val/per_beat" in tags["images"]
    assert ea.Scalars("eval/val/play_nll_per_frame")[-1].value == pytest.approx(report["play_nll_per_frame"], rel=1e-5)
    assert ea.Scalars("eval/val/play_nll_per_frame")[-1].step == 4  # the session run's checkpoint


@pytest.mark.slow
def test_cli_refusals_are_clear(trained_run, tiny_shards, tmp_path):
    res = run_cli("-m", "deepj.evaluate", str(tmp_path / "none"), "--data", str(tiny_shards))
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = run_cli("-m", "deepj.evaluate", str(trained_run), "--data", str(tmp_path / "no-shards"))
    assert res.returncode == 2 and "manifest.json not found" in res.stderr
    res = run_cli("-m", "deepj.evaluate", str(trained_run), "--data", str(tiny_shards), "--split", "test")
    assert res.returncode == 2 and "'test'" in res.stderr  # the tiny corpus has no test split
    # Shards of another pitch range: refused, whatever their content.
    other = tmp_path / "other"
    shutil.copytree(tiny_shards, other)
    dataclasses.replace(Manifest.load(other), representation=ReprConfig(21, 109)).write()
    res = run_cli("-m", "deepj.evaluate", str(trained_run), "--data", str(other))
    assert res.returncode == 2 and "refusing" in res.stderr and "[36, 84)" in res.stderr and "[21, 109)" in res.stderr
    assert str(other) in res.stderr and "step-00000004" in res.stderr  # both folders named
