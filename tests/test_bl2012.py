"""The BL2012 benchmark: the reader against the data README, the baseline, whole-piece scoring, batches, errors, and
an end-to-end run on a slice of JSB."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import scipy.io
import torch
from conftest import BL2012_DIR, REPO, needs_bl2012, run_cli

from deepj import config
from deepj.bench.bl2012 import BL2012Config
from deepj.bench.bl2012_data import NUM_KEYS, BL2012Error, bernoulli_baseline, epoch_crops, make_batch, read_bl2012
from deepj.bench.bl2012_score import evaluate_pieces
from deepj.model import DeepJ, ModelConfig
from deepj.music.constants import PLAY
from deepj.training.checkpoint import CheckpointMeta, load_model

DATA = BL2012_DIR
JSB = DATA / "JSB_Chorales.mat"
needs_data = needs_bl2012

# From the shared data folder's README: pieces train / valid / test and test frames.
README_COUNTS = {
    "JSB_Chorales.mat": (229, 76, 77, 4725),
    "Piano_midi.mat": (87, 12, 25, 19036),
    "MuseData.mat": (524, 135, 124, 64339),
    "Nottingham.mat": (694, 173, 170, 44463),
}


@pytest.fixture(scope="module")
def jsb():
    return read_bl2012(JSB)


@needs_data
@pytest.mark.parametrize("name", sorted(README_COUNTS))
def test_reader_counts_match_the_readme(name):
    splits = read_bl2012(DATA / name)
    train, valid, test, test_frames = README_COUNTS[name]
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [train, valid, test]
    assert sum(len(p) for p in splits["test"]) == test_frames
    for roll in splits["train"][:5]:
        assert roll.dtype == np.uint8 and roll.shape[1] == NUM_KEYS and set(np.unique(roll)) <= {0, 1}


@needs_data
def test_baseline_matches_readme_on_jsb(jsb):
    assert bernoulli_baseline(jsb["train"], jsb["test"]) == pytest.approx(11.06, abs=0.05)


def test_baseline_by_hand():
    train = [np.array([[1] + [0] * 87, [1] + [0] * 87, [0] * 88], dtype=np.uint8)]  # key 0 on in 2 of 3 frames
    test = [np.array([[1] + [0] * 87], dtype=np.uint8)]
    p0 = (2 + 0.5) / (3 + 1)  # add-1/2 smoothing
    p_other = 0.5 / 4
    want = -math.log(p0) - 87 * math.log(1 - p_other)
    assert bernoulli_baseline(train, test) == pytest.approx(want, rel=1e-12)


# ------------------------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(BL2012Error, match="no such file"):
        read_bl2012(tmp_path / "nope.mat")


def test_not_a_mat_file(tmp_path):
    bad = tmp_path / "bad.mat"
    bad.write_text("this is not a MATLAB file\n" * 20)
    with pytest.raises(BL2012Error, match="not a readable MATLAB"):
        read_bl2012(bad)


def _cells(*rolls) -> np.ndarray:
    arr = np.empty((1, len(rolls)), dtype=object)
    for i, r in enumerate(rolls):
        arr[0, i] = r
    return arr


def test_wrong_keys(tmp_path):
    path = tmp_path / "wrong.mat"
    scipy.io.savemat(path, {"traindata": _cells(np.zeros((4, 88), np.uint8)), "foo": np.zeros(3)})
    with pytest.raises(BL2012Error, match=r"missing key\(s\) validdata, testdata.*has: foo, traindata"):
        read_bl2012(path)


def test_empty_split_and_bad_shape(tmp_path):
    roll = np.zeros((4, 88), np.uint8)
    path = tmp_path / "empty.mat"
    scipy.io.savemat(path, {"traindata": _cells(roll), "validdata": _cells(roll), "testdata": np.empty((1, 0), object)})
    with pytest.raises(BL2012Error, match="testdata holds no pieces"):
        read_bl2012(path)
    path = tmp_path / "shape.mat"
    scipy.io.savemat(path, {"traindata": _cells(roll), "validdata": _cells(np.zeros((4, 87), np.uint8)),
                            "testdata": _cells(roll)})
    with pytest.raises(BL2012Error, match=r"validdata piece 0 has shape \(4, 87\)"):
        read_bl2012(path)


def test_cli_errors_are_clear(tmp_path):
    res = run_cli("-m", "deepj.bench", "bl2012", "--dataset", "jsb", "--mat", str(tmp_path / "none.mat"))
    assert res.returncode == 2 and "no such file" in res.stderr
    res = run_cli("-m", "deepj.bench", "bl2012", "--dataset", "jsb", "--mat", str(JSB), "train.nope=1")
    assert res.returncode == 2 and "unknown config key 'train.nope'" in res.stderr
    res = run_cli("-m", "deepj.bench", "no-such-bench")
    assert res.returncode == 2 and "unknown benchmark 'no-such-bench'" in res.stderr and "bl2012" in res.stderr


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "bl2012").glob("*.toml")), ids=lambda p: p.name)
def test_every_bl2012_config_loads_against_its_schema(path):
    cfg = config.load(BL2012Config, path)
    assert cfg.run_dir.startswith("runs/bl2012-") and cfg.train.max_minutes > 0


def test_bl2012_configs_exist():
    assert {p.name for p in (REPO / "configs" / "bl2012").glob("*.toml")} >= {"jsb.toml", "piano.toml"}
    assert not list((REPO / "configs").glob("bl2012_*.toml"))  # moved into configs/bl2012/


def test_dispatcher_lists_benchmarks(capsys):
    from deepj.bench.__main__ import available, main

    assert "bl2012" in available() and "__main__" not in available()
    assert main(["--help"]) == 0 and "bl2012" in capsys.readouterr().out
    assert main([]) == 2


# ------------------------------------------------------------------------------------------- batches
def test_make_batch_shifts_masks_and_first_frame():
    rng = np.random.default_rng(0)
    pieces = [(rng.random((10, 88)) < 0.1).astype(np.uint8), (rng.random((6, 88)) < 0.1).astype(np.uint8)]
    pieces[0][:, :3] = 0  # room to shift down by 3
    b = make_batch(pieces, [(0, 4, 5, -3), (1, 0, 6, 0)], beat_period=4)
    assert b["prev"].shape == b["target"].shape == (2, 6, 88, 3)
    # crop 0: frames 4..8 of piece 0, shifted down 3 keys; prev of frame 4 is frame 3
    assert torch.equal(b["target"][0, :5, :85, PLAY], torch.from_numpy(pieces[0][4:9, 3:]).float())
    assert torch.equal(b["prev"][0, 0, :85, PLAY], torch.from_numpy(pieces[0][3, 3:]).float())
    assert b["mask"][0].tolist() == [1, 1, 1, 1, 1, 0] and b["mask"][1].tolist() == [1] * 6
    assert b["target"][0, 5].abs().sum() == 0  # padding is silent
    # crop 1 starts the piece: its first prev frame is all zeros
    assert b["prev"][1, 0].abs().sum() == 0
    assert torch.equal(b["prev"][1, 1:, :, PLAY], torch.from_numpy(pieces[1][:5]).float())
    assert b["beat"][0].tolist() == [0, 1, 2, 3, 0, 1]  # (4 + t) % 4
    assert b["target"][..., 1:].abs().sum() == 0  # replay and volume channels stay zero


@needs_data
def test_epoch_crops_keep_every_note_and_visit_every_piece(jsb):
    pieces = jsb["train"][:40]
    batches = epoch_crops(pieces, seq_len=0, transpose=6, batch=8, rng=np.random.default_rng(1))
    crops = [c for b in batches for c in b]
    assert sorted(c[0] for c in crops) == list(range(40))  # whole pieces: each once
    assert any(c[3] != 0 for c in crops)
    for b in batches:
        batch = make_batch(pieces, b, 16)
        want = sum(int(pieces[i][s: s + n].sum()) for i, s, n, _ in b)
        assert int(batch["target"][..., PLAY].sum()) == want  # no note was shifted out of the 88 keys
    crops = [c for b in epoch_crops(pieces, 16, 0, 8, np.random.default_rng(2)) for c in b]
    assert all(c[2] == min(16, len(pieces[c[0]])) for c in crops)
    assert len(crops) == sum(max(1, round(len(p) / min(16, len(p)))) for p in pieces)


class FixedLogits(torch.nn.Module):
    """Play logit a + b * (previous frame's key played): lets the NLL be worked out by hand."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, prev, target, beat, style):
        out = torch.zeros_like(target)
        out[..., PLAY] = self.a + self.b * prev[..., PLAY]
        return out


def test_evaluate_pieces_scores_every_frame_once_with_zero_history():
    """By hand: every frame, and (as loops that never score a piece's first frame do) every frame but the first."""
    rng = np.random.default_rng(3)
    pieces = [(rng.random((n, 88)) < 0.2).astype(np.uint8) for n in (7, 3, 12, 1)]
    a, b = -1.0, 2.0
    first = rest = 0.0
    for roll in pieces:
        prev = np.vstack([np.zeros((1, 88)), roll[:-1]])  # the first frame follows an all-zero frame
        z, y = a + b * prev, roll.astype(np.float64)
        nll = (np.log1p(np.exp(z)) - y * z).sum(1)  # (frames,) Bernoulli NLL of logit z, summed over keys
        first, rest = first + nll[0], rest + nll[1:].sum()
    frames = sum(len(p) for p in pieces)
    model = FixedLogits(a, b)
    for budget in (1, 12, 10_000):  # one piece per batch .. all in one batch: the same numbers
        score = evaluate_pieces(model, pieces, 16, frame_budget=budget)
        assert score.nll == pytest.approx((first + rest) / frames, rel=1e-6)  # float32 logits
        assert score.nll_after_first == pytest.approx(rest / (frames - len(pieces)), rel=1e-6)
        assert (score.frames, score.pieces) == (frames, 4)


def test_uniform_model_scores_88_ln2():
    pieces = [np.eye(88, dtype=np.uint8)[:5]]
    assert evaluate_pieces(FixedLogits(0.0, 0.0), pieces, 16).nll == pytest.approx(88 * math.log(2), rel=1e-6)


def test_whole_piece_padding_does_not_leak_into_real_frames():
    """Scoring a piece alone or padded beside a longer one gives the same NLL (padding comes after, time is causal)."""
    torch.manual_seed(0)
    model = DeepJ(ModelConfig(num_notes=88, num_styles=1, play_only=True, style_dim=4, conv_filters=4,
                              time_hidden=8, note_hidden=8)).eval()
    rng = np.random.default_rng(4)
    short, long = (rng.random((5, 88)) < 0.1).astype(np.uint8), (rng.random((20, 88)) < 0.1).astype(np.uint8)
    together = evaluate_pieces(model, [short, long], 16, frame_budget=10_000).nll
    separate = (evaluate_pieces(model, [short], 16).nll * 5 + evaluate_pieces(model, [long], 16).nll * 20) / 25
    assert together == pytest.approx(separate, rel=1e-5)
    assert 0 < together < 88 * math.log(2) * 1.5


# ------------------------------------------------------------------------------------------- end to end
@needs_data
@pytest.mark.slow
def test_benchmark_end_to_end_on_a_jsb_slice(tmp_path):
    run = tmp_path / "run"
    args = ("--dataset", "jsb", "--mat", str(JSB), "--config", "configs/bl2012/jsb.toml", "data.max_pieces=6",
            "train.max_epochs=1", "model.time_hidden=16", "model.note_hidden=8", "model.conv_filters=4",
            "model.style_dim=4", "threads=1", f"run_dir={run}")
    res = run_cli("-m", "deepj.bench", "bl2012", *args, timeout=120)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("dataset", "test_nll", "valid_nll", "baseline_nll", "config", "epochs", "seconds", "machine"):
        assert key in result
    assert result["dataset"] == "jsb" and result["epochs"] == 1
    speed = re.search(r"epoch   1 \| step .* \| ([\d,]+) frames/s\n", res.stdout)
    assert speed and int(speed.group(1).replace(",", "")) > 0, res.stdout[-2000:]
    assert result["test_frames"] == sum(len(p) for p in read_bl2012(JSB)["test"][:6])
    # One tiny epoch: far from the baseline, but the play bias starts at the key density (~16 nats, not 61).
    assert 5 < result["test_nll"] < 25 and result["baseline_nll"] > 5
    assert result["config"]["model"]["play_only"] is True and result["config"]["model"]["num_notes"] == 88
    assert result["published"] == {"rnn_rbm": 6.27, "rnn_nade": 5.56}
    assert json.loads((run / "result.json").read_text())["test_nll"] == result["test_nll"]
    # The checkpoint is a complete, weights_only-loadable deepj checkpoint of the best model, with its meta.json.
    model, meta, ckpt = load_model(run)
    assert model.cfg.play_only and model.cfg.num_notes == 88 and not model.training
    assert meta.kind == "bl2012" and meta.backend == "none" and meta.world_size == 1
    assert meta.step == result["steps"] and str(ckpt) == result["checkpoint"]
    assert (meta.representation.min_pitch, meta.representation.max_pitch) == (21, 109)
    assert meta.styles.styles == ("bl2012/jsb",) and meta.manifest_hash == result["mat_sha256"]
    assert meta.model == model.cfg and meta.config == result["config"]
    assert CheckpointMeta.load(ckpt) == meta and (ckpt / "meta.json").is_file()
    splits = read_bl2012(JSB)
    again = evaluate_pieces(model, splits["test"][:6], meta.config["data"]["beat_period"]).nll
    assert again == pytest.approx(result["test_nll"], abs=1e-3)
    # A second run into the same folder is refused (its older best model would win).
    # The same command again: the run has finished. Other settings in its folder: refused, naming them.
    res = run_cli("-m", "deepj.bench", "bl2012", *args)
    assert res.returncode == 2 and "this run has finished (max_epochs)" in res.stderr, res.stderr
    res = run_cli("-m", "deepj.bench", "bl2012", *args, "model.dropout=0.3")
    assert res.returncode == 2 and "model.dropout: 0.2 there, 0.3 here" in res.stderr, res.stderr
