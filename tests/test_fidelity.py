"""deepj.fidelity: features that ignore volume and key, a classifier that learns a toy two-style corpus, accuracy
bookkeeping, clear errors, and the CLI end to end on a tiny trained run (listening page, JSON, TensorBoard)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from shardgen import random_piece, write_corpus

from deepj import fidelity as fd
from deepj.data.manifest import ShardError
from deepj.evaluation import classifier as ff
from deepj.evaluation import listening
from deepj.music.representation import ReprConfig, notes_to_roll
from deepj.music.styles import StyleTree, slug
from deepj.sampling import SampleConfig

CFG = ReprConfig()


def _roll(seed: int, steps: int = 64, pitches=(50, 70)) -> np.ndarray:
    notes = random_piece(np.random.default_rng(seed), steps, density=1.0, max_len=6, pitches=pitches)
    return notes_to_roll(notes, CFG, 0, steps)


def test_features_ignore_volume():
    roll = _roll(0)
    other = roll.copy()
    other[..., 2] = np.where(other[..., 0] > 0.5, 1.0, 0.0)  # every note at full volume
    f = ff.window_features(roll, CFG)
    assert f.shape == (ff.NUM_FEATURES,) and np.isfinite(f).all()
    np.testing.assert_array_equal(f, ff.window_features(other, CFG))


def test_only_register_features_change_under_transposition():
    notes = random_piece(np.random.default_rng(1), 64, density=1.0, max_len=6, pitches=(50, 70))
    a = ff.window_features(notes_to_roll(notes, CFG, 0, 64), CFG)
    b = ff.window_features(notes_to_roll(notes, CFG, 0, 64, transpose=5), CFG)
    moved = {"register", "pitch_mean_std"}
    for name, sl in ff.FEATURE_SLICES.items():
        if name in moved:
            assert not np.allclose(a[sl], b[sl]), name
        else:
            np.testing.assert_allclose(a[sl], b[sl], atol=1e-6, err_msg=name)


def test_features_of_silence_and_hand_made_window():
    f = ff.window_features(np.zeros((32, CFG.num_notes, 3), np.float32), CFG)
    assert np.isfinite(f).all()
    assert f[ff.FEATURE_SLICES["polyphony"]][0] == 1.0  # every step silent
    # A C-major triad held for a bar, then silence: 3 notes, all onsets on beat 0, polyphony 3 for 16 of 32 steps.
    roll = notes_to_roll(np.array([(60, 0, 16, 64), (64, 0, 16, 64), (67, 0, 16, 64)],
                                  dtype=[("pitch", "u1"), ("start", "u4"), ("end", "u4"), ("velocity", "u1")]),
                         CFG, 0, 32)
    f = ff.window_features(roll, CFG)
    np.testing.assert_allclose(f[ff.FEATURE_SLICES["polyphony"]], [0.5, 0, 0, 0.5, 0, 0, 0])
    assert f[ff.FEATURE_SLICES["beat_position"]][0] == 1.0
    assert f[ff.FEATURE_SLICES["mode"]][0] == 0.0  # major
    chroma = f[ff.FEATURE_SLICES["key_chroma"]]
    np.testing.assert_allclose(chroma[[0, 4, 7]], [1 / 3] * 3, atol=1e-6)  # tonic C -> index 0
    # Intervals of C-E-G: a major third (4), a minor third (3) and a fifth (= interval class 5).
    np.testing.assert_allclose(f[ff.FEATURE_SLICES["vertical_intervals"]], [0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 0])


def test_accuracy_block_by_hand():
    prob = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    res = ff.accuracy_block(np.array([0, 0, 1, 1]), prob, ["a", "b"])
    assert res["accuracy"] == 0.75 and res["balanced_accuracy"] == 0.75
    assert res["recall"] == {"a": 0.5, "b": 1.0} and res["confusion"] == [[1, 1], [0, 2]]
    assert res["mean_prob_true"]["a"] == pytest.approx(0.65) and res["mean_prob_true"]["b"] == pytest.approx(0.75)
    empty = ff.accuracy_block(np.array([1]), np.array([[0.2, 0.8]]), ["a", "b"])
    assert empty["recall"]["a"] is None and empty["balanced_accuracy"] == 1.0


def test_shift_correction_moves_the_generated_centre_onto_the_real_one():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 5)).astype(np.float32)
    y_real = np.repeat([0, 1, 2], 20)
    real[y_real == 1] += 3.0
    gen = real[:40] * 0.5 - 7.0  # classes 0 and 1 only, squeezed and offset
    fixed = ff.shift_corrected(gen, y_real[:40], real, y_real)
    centre = lambda x, y: np.mean([x[y == c].mean(0) for c in (0, 1)], axis=0)  # noqa: E731
    np.testing.assert_allclose(centre(fixed, y_real[:40]), centre(real, y_real), atol=1e-5)
    np.testing.assert_allclose(fixed[:20] - fixed[20:], gen[:20] - gen[20:], atol=1e-5)  # differences kept


def test_level_labels():
    styles = ["baroque/bach", "baroque/handel", "folk/essen"]
    assert ff.level_labels(styles, "period") == (["baroque", "folk"], pytest.approx(np.array([0, 0, 1])))
    classes, idx = ff.level_labels(styles, "composer")
    assert classes == styles and idx.tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def toy_shards(tmp_path_factory) -> Path:
    """Two styles of random pieces: low register with long notes, high register with short ones."""
    rng = np.random.default_rng(0)

    def pieces(n):
        low = [(0, random_piece(rng, 128, density=0.4, max_len=8, pitches=(36, 58))) for _ in range(n)]
        high = [(1, random_piece(rng, 128, density=1.2, max_len=2, pitches=(62, 84))) for _ in range(n)]
        return low + high

    out = tmp_path_factory.mktemp("toy") / "shards"
    write_corpus(out, {"train": pieces(8), "val": pieces(3)}, shard_bytes=1 << 20, styles=["low/a", "high/b"])
    return out


def test_classifier_learns_two_toy_styles(toy_shards):
    train = fd.real_windows(toy_shards, "train", 32, transpose=6, max_per_style=1000, seed=0)
    val = fd.real_windows(toy_shards, "val", 32, transpose=0, max_per_style=1000, seed=0)
    assert len(train.style) == 2 * 8 * 7  # (128 - 32) // 16 + 1 = 7 windows per piece
    assert len(val.style) == 2 * 3 * 7 and sorted(set(val.style)) == [0, 1]
    clf = ff.StyleClassifier(["low", "high"]).fit(train.x(), train.y(), epochs=150)
    res = ff.accuracy_block(val.y(), clf.predict_proba(val.x()), clf.classes)
    assert res["accuracy"] >= 0.95, res
    capped = fd.real_windows(toy_shards, "train", 32, transpose=0, max_per_style=10, seed=0)
    assert np.bincount(capped.y()).tolist() == [10, 10]


def test_classifier_needs_two_styles():
    with pytest.raises(ff.FidelityError, match="at least 2 styles"):
        ff.StyleClassifier(["a", "b"]).fit(np.zeros((4, ff.NUM_FEATURES), np.float32), np.zeros(4, np.int64))


def test_empty_and_short_data_are_clear_errors(tmp_path):
    rng = np.random.default_rng(0)
    write_corpus(tmp_path / "short", {"train": [(0, random_piece(rng, 20)), (1, random_piece(rng, 24))]},
                 shard_bytes=1 << 20, styles=["low/a", "high/b"])
    with pytest.raises(fd.FidelityError, match=r"no piece of the train split is 32 steps \(2 bars\) long; lower"):
        fd.real_windows(tmp_path / "short", "train", 32, transpose=0, max_per_style=10, seed=0)
    with pytest.raises(ShardError, match="no shards for split 'val'"):
        fd.real_windows(tmp_path / "short", "val", 16, transpose=0, max_per_style=10, seed=0)


def test_blend_level():
    styles = StyleTree.from_leaves(["baroque/bach", "folk/essen"])
    assert fd.blend_level("baroque", "folk", styles) == ("period", "baroque", "folk")
    assert fd.blend_level("bach", "folk/essen", styles) == ("composer", "baroque/bach", "folk/essen")
    with pytest.raises(fd.FidelityError, match="name two periods"):
        fd.blend_level("baroque", "essen", styles)


def test_options_are_checked_and_named_as_on_the_command_line():
    with pytest.raises(fd.FidelityError, match="--lead-bars"):
        fd.FidelityOptions(lead_bars=-1)
    with pytest.raises(fd.FidelityError, match="choose from period, composer"):
        fd.FidelityOptions(levels=("era",))
    args = fd.parse_args(["run", "--data", "x", "--level", "both", "--temperature", "0.5", "--mode", "window",
                          "--blend", "a,b"])
    opts = fd.options(args)
    assert opts.levels == fd.LEVELS and opts.blend == ("a", "b")
    assert opts.sample == SampleConfig(temperature=0.5, mode="window")  # generation's own sampling options
    with pytest.raises(fd.FidelityError, match="^--temperature must be > 0"):
        fd.options(fd.parse_args(["run", "--data", "x", "--temperature", "0"]))


def test_one_slug_for_styles_and_blends():
    assert slug("Baroque/Bach") == "baroque-bach"
    assert slug(["baroque=0.5", "classical=0.5"]) == "baroque=0.5+classical=0.5"
    assert slug(["bach"]) == slug("bach") == "bach"
    assert slug("//") == slug([]) == "style"


def test_cli_bad_paths_and_options(tiny_shards, tmp_path, capsys):
    assert fd.main([str(tmp_path / "no-run"), "--data", str(tmp_path / "no-data")]) == 2
    assert "manifest.json not found" in capsys.readouterr().err
    assert fd.main([str(tmp_path / "no-run"), "--data", str(tiny_shards)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert fd.main([str(tmp_path / "no-run"), "--data", str(tiny_shards), "--blend", "baroque"]) == 2
    assert "two style names" in capsys.readouterr().err
    assert fd.main([str(tmp_path / "no-run"), "--data", str(tiny_shards), "--lead-bars", "-1"]) == 2
    assert "--lead-bars" in capsys.readouterr().err
    assert fd.main([str(tmp_path / "no-run"), "--data", str(tiny_shards), "--silence-redraws", "-1"]) == 2
    assert "--silence-redraws" in capsys.readouterr().err


def test_lead_bars_classify_the_end_of_longer_pieces():
    """generate_rolls(lead=L) returns the last W steps of the same pieces that L + W steps without a lead give."""
    import torch

    from deepj.model import DeepJ, ModelConfig

    torch.manual_seed(0)
    model = DeepJ(ModelConfig(num_notes=12, num_styles=2, style_dim=4, conv_filters=3, conv_kernel=5, time_hidden=8,
                              note_hidden=6))
    vectors = torch.eye(2)
    whole = fd.generate_rolls(model, vectors, 3, 24, SampleConfig(), seed=5, device="cpu")  # (2, 3, 24, 12, 3)
    tail = fd.generate_rolls(model, vectors, 3, 8, SampleConfig(), seed=5, device="cpu", lead=16)
    assert tail.shape == (2, 3, 8, 12, 3) and whole[..., :, 0].sum() > 0
    np.testing.assert_array_equal(tail, whole[:, :, 16:])


@pytest.mark.slow
def test_cli_end_to_end(trained_run, tiny_shards, tmp_path):
    out = tmp_path / "eval"
    res = run_cli("-m", "deepj.fidelity", str(trained_run), "--data", str(tiny_shards), "--num", "2", "--bars", "2",
                  "--level", "both", "--blend", "baroque,classical", "--out", str(out), "--listen", "1", "--no-audio")
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "fidelity.json").read_text())
    assert rep["window_steps"] == 32 and rep["step"] == 4 and rep["silence_redraws"] == 8  # the sampler's default
    assert rep["sample_mode"] == "stateful" and rep["temperature"] == 1.0
    period, composer = rep["levels"]["period"], rep["levels"]["composer"]
    assert period["classes"] == ["baroque", "classical"] and period["chance"] == 0.5
    assert composer["classes"] == ["baroque/bach", "baroque/handel", "classical/mozart"]
    for lv in (period, composer):
        cm = np.array(lv["generated"]["confusion"])
        assert cm.sum(1).tolist() == [2] * len(lv["classes"])  # 2 pieces requested per style
        assert np.array(lv["real_val"]["confusion"]).sum() == rep["real_windows"]["val"]
        assert 0.0 <= lv["generated"]["accuracy"] <= 1.0
        for st in lv["stats"].values():
            assert set(st["oa"]) >= {"pitch_range", "polyphony", "scale_consistency", "pitch_class"}
    assert [r["w"] for r in rep["blend"]["rows"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(abs(r["p_a"] + r["p_b"] - 1.0) < 1e-5 for r in rep["blend"]["rows"])  # two classes
    # The listening page links only relative paths, and every one exists.
    page = (out / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert any(link.endswith(".png") for link in links) and any(link.endswith(".mid") for link in links)
    for link in links:
        assert not link.startswith("/") and (out / link).is_file(), link
    assert "baroque" in page and "classical/mozart" in page and "would begin a silence redrawn up to 8 times" in page
    (out / "index.html").unlink()
    assert listening.main([str(out)]) == 0 and (out / "index.html").read_text() == page  # rebuilt from the JSON
    # Scalars under fidelity/ in the run's TensorBoard.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained_run / "tb"))
    acc.Reload()
    assert "fidelity/period/generated_accuracy" in acc.Tags()["scalars"]
    assert "fidelity/composer/confusion_generated" in acc.Tags()["images"]


def test_evaluate_styles_delegates_to_fidelity(capsys):
    """`python -m deepj.evaluate RUN --data DIR --styles` is the issue's spelling of the fidelity evaluation."""
    from deepj import evaluate

    with pytest.raises(SystemExit):
        evaluate.main(["--styles", "--help"])
    assert "deepj.fidelity" in capsys.readouterr().out
