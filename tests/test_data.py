"""The streaming loader against docs/design.md, distributed pitfalls 1-6: equal batches per rank, coverage, workers,
resume, elastic world sizes, transposition, bounded worker memory, and bad shards. Tiny windows (seq_len 8, stride 4)
keep it fast."""

from __future__ import annotations

import contextlib
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from shardgen import STYLES, random_piece, write_corpus

from deepj.config import ConfigError
from deepj.data.loader import (
    DataConfig,
    ShardSkipped,
    StreamingLoader,
    accumulation_steps,
    validation_batches,
)
from deepj.data.manifest import Manifest, ShardError
from deepj.music.representation import ReprConfig, notes_to_roll

SEQ, STRIDE = 8, 4
KEYS = ("notes", "beat", "style", "window")


def make_corpus(d: Path):
    """Train pieces of 3 to ~1500 steps (shards from 1 to ~370 windows), half of them in a narrow pitch band so that
    transposition has room; a small val split. Returns (dir, {split: [(style, notes)] in manifest order}, manifest)."""
    rng = np.random.default_rng(1)
    lengths = np.exp(rng.uniform(np.log(3), np.log(1500), 40)).astype(int)
    lengths[:3] = [3, 1500, 5]
    train = [(int(rng.integers(3)), random_piece(rng, int(t), pitches=(50, 70) if i % 2 else (36, 84)))
             for i, t in enumerate(lengths)]
    val = [(int(rng.integers(3)), random_piece(rng, int(t))) for t in (40, 9, 100)]
    manifest = write_corpus(d, {"train": train, "val": val}, shard_bytes=6000)
    return d, {"train": train, "val": val}, manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


POOL_MB = 0.02  # ~20 kB of decoded notes: pools of a few pieces, so that an epoch has several


def cfg_for(d, **kw) -> DataConfig:
    return DataConfig(**{"dir": str(d), "seq_len": SEQ, "stride": STRIDE, "shuffle_mb": POOL_MB, "workers": 0, **kw})


def catalogue(manifest, split="train") -> list[tuple[int, int]]:
    """(piece, start) of every window id, recomputed here from the manifest alone."""
    steps = manifest.piece_steps(split).tolist()
    return [(i, k * STRIDE) for i, t in enumerate(steps) for k in range(max(1, (t - SEQ) // STRIDE + 1))]


def shard_steps(manifest, split="train") -> list[list[int]]:
    """Steps of each piece, shard by shard."""
    first, lo = manifest.shard_first_piece(), manifest.split_range(split)[0]
    steps = manifest.piece_steps(split).tolist()
    return [steps[first[i] - lo : first[i + 1] - lo] for i, s in enumerate(manifest.shards) if s.split == split]


def take(loader, n):
    """n micro-batches, across epoch ends, as a trainer would pull them."""
    out = []
    while len(out) < n:
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
    return out


def wins(batches) -> list[tuple[int, int]]:
    return [(int(p), int(s)) for b in batches for p, s, _ in b["window"].tolist()]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in KEYS:
            assert torch.equal(x[k], y[k]), k


@contextlib.contextmanager
def deadline(seconds: float):
    """Turn a hang into a failure."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"no result within {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- docs/design.md, distributed pitfall 1: equal batches per rank -----------------------------------------------------
def test_ranks_get_equal_batches_over_uneven_shards(corpus):
    d, _, manifest = corpus
    shard_windows = [sum(max(1, (t - SEQ) // STRIDE + 1) for t in steps) for steps in shard_steps(manifest)]
    assert max(shard_windows) >= 50 * min(shard_windows)  # very different shard sizes
    total = len(catalogue(manifest))
    loaders = [StreamingLoader(cfg_for(d), micro_batch=4, global_batch=24, rank=r, world_size=3) for r in range(3)]
    with deadline(60):
        for epoch in range(2):
            counts = [sum(1 for _ in ld) for ld in loaders]
            assert counts == [total // 24 * 2] * 3, (epoch, counts)
        for n in (3, 50):  # 50 * 3 * 4 windows is more than the val split has: it cycles
            counts = [sum(1 for _ in validation_batches(cfg_for(d), micro_batch=4, rank=r, world_size=3,
                                                          num_batches=n)) for r in range(3)]
            assert counts == [n] * 3


@pytest.mark.slow
def test_one_shard_two_ranks_two_workers(tmp_path):
    rng = np.random.default_rng(2)
    manifest = write_corpus(tmp_path, {"train": [(0, random_piece(rng, 30)), (1, random_piece(rng, 50))]},
                            shard_bytes=1 << 30)
    assert len(manifest.shards) == 1
    cfg = cfg_for(tmp_path, workers=2)
    loaders = [StreamingLoader(cfg, micro_batch=1, global_batch=4, rank=r, world_size=2) for r in range(2)]
    total = loaders[0].total_windows  # 6 + 11 = 17 windows, 4 steps of 4
    with deadline(60):
        seen = [wins(list(ld)) for ld in loaders]
    assert [len(s) for s in seen] == [8, 8] and total == 17
    assert len(set(seen[0] + seen[1])) == 16


# -- docs/design.md, distributed pitfall 3: every window once, the order a function of (seed, epoch) -------------------
@pytest.mark.parametrize("world, micro", [(1, 3), (2, 3), (3, 2)])
def test_epoch_covers_every_window_once(corpus, world, micro):
    d, _, manifest = corpus
    cat, g = catalogue(manifest), 12
    loaders = [StreamingLoader(cfg_for(d), micro_batch=micro, global_batch=g, rank=r, world_size=world, seed=5)
               for r in range(world)]
    acc = loaders[0].accumulation
    assert acc * micro * world == g
    epochs = []
    for epoch in range(2):
        per_rank = [list(ld) for ld in loaders]
        steps = len(per_rank[0]) // acc
        # Step b is rank 0's A micro-batches, then rank 1's, ...: the epoch's order cut into G-sized pieces.
        seq = [w for b in range(steps) for r in range(world) for w in wins(per_rank[r][b * acc : (b + 1) * acc])]
        order = [cat[i] for i in loaders[0].order(epoch)]
        assert seq == order[: steps * g]
        assert len(set(seq)) == len(seq) == len(cat) - len(cat) % g
        assert set(cat) - set(seq) == set(order[steps * g :])  # only the < G tail of this epoch's permutation
        epochs.append(seq)
    assert epochs[0][:50] != epochs[1][:50]  # the order changes from epoch to epoch


def test_order_independent_of_world_size_and_changes_with_seed(corpus):
    d, _, _ = corpus
    a = StreamingLoader(cfg_for(d), micro_batch=2, global_batch=12, world_size=3, rank=2, seed=7).order(3)
    b = StreamingLoader(cfg_for(d, workers=1), micro_batch=12, global_batch=12, seed=7).order(3)
    c = StreamingLoader(cfg_for(d), micro_batch=12, global_batch=12, seed=8).order(3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert sorted(a.tolist()) == list(range(len(a)))


# -- docs/design.md, distributed pitfall 4: workers change nothing -----------------------------------------------------
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_same_batches_for_0_1_3_workers(corpus):
    d, _, _ = corpus
    runs = []
    with deadline(120):
        for workers in (0, 1, 3):
            ld = StreamingLoader(cfg_for(d, workers=workers), micro_batch=3, global_batch=12, rank=1, world_size=2)
            runs.append((ld.steps_per_epoch(), list(ld), list(ld)[:5]))
    for steps, epoch0, epoch1 in runs[1:]:
        assert steps == runs[0][0]
        assert_same(epoch0, runs[0][1])
        assert_same(epoch1, runs[0][2])


# -- docs/design.md, distributed pitfall 5: resume bit for bit ---------------------------------------------------------
def roundtrip(state, tmp_path):
    """Through a weights_only checkpoint, as the trainer stores it."""
    torch.save({"data": state}, tmp_path / "ckpt.pt")
    return torch.load(tmp_path / "ckpt.pt", weights_only=True)["data"]


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resume_chain_is_bit_identical(corpus, tmp_path, workers):
    d, _, _ = corpus

    def make():
        return StreamingLoader(cfg_for(d, workers=workers), micro_batch=2, global_batch=8, world_size=2, rank=1, seed=3)

    ref_loader = make()
    acc, spe = ref_loader.accumulation, ref_loader.steps_per_epoch()
    # Stops: mid-epoch, exactly at the epoch's end, one step into epoch 1; then run on.
    cuts = [3 * acc, (spe - 3) * acc, 1 * acc, 12 * acc]
    with deadline(120):
        ref = take(ref_loader, sum(cuts))
        got, state = [], None
        for k, n in enumerate(cuts):
            ld = make()
            it = iter(ld)  # built before the state is loaded: must still start from the restored position
            if state is not None:
                ld.load_state_dict(roundtrip(state, tmp_path))
            got += [next(it) for _ in range(n)]
            state = ld.state_dict()
            if k == 1:
                assert state["epoch"] == 1 and state["consumed"] == 0  # at the epoch edge
    assert_same(got, ref)
    assert state == ref_loader.state_dict()


def test_state_refusals(corpus):
    d, _, _ = corpus
    ld = StreamingLoader(cfg_for(d), micro_batch=2, global_batch=8, seed=3)
    take(ld, 1)  # one micro-batch of four: in the middle of an optimizer step
    with pytest.raises(ValueError, match="middle of an optimizer step"):
        StreamingLoader(cfg_for(d), micro_batch=2, global_batch=8, seed=3).load_state_dict(ld.state_dict())
    take(ld, 3)
    state = ld.state_dict()
    with pytest.raises(ValueError, match="seed"):
        StreamingLoader(cfg_for(d), micro_batch=2, global_batch=8, seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="total_windows"):
        StreamingLoader(cfg_for(d, stride=8), micro_batch=2, global_batch=8, seed=3).load_state_dict(state)
    it = iter(ld)
    next(it)
    ld.load_state_dict(state)
    with pytest.raises(RuntimeError, match="superseded"):
        next(it)


# -- docs/design.md, distributed pitfall 6: elastic world size ---------------------------------------------------------
def rest_of_epoch(loaders) -> list[list[tuple[int, int]]]:
    """Windows per optimizer step, over all ranks, for the rest of the current epoch."""
    acc = loaders[0].accumulation
    per_rank = [wins(list(ld)) for ld in loaders]
    step = acc * loaders[0].micro_batch
    return [sorted(w for r in per_rank for w in r[b * step : (b + 1) * step]) for b in range(len(per_rank[0]) // step)]


@pytest.mark.parametrize("before, after", [((2, 3), (1, 6)), ((1, 4), (3, 2))])
def test_elastic_resume_same_global_batch(corpus, before, after):
    d, _, _ = corpus
    g = 12
    (w0, b0), (w1, b1) = before, after
    first = [StreamingLoader(cfg_for(d), micro_batch=b0, global_batch=g, rank=r, world_size=w0, seed=9)
             for r in range(w0)]
    ref = [StreamingLoader(cfg_for(d), micro_batch=b0, global_batch=g, rank=r, world_size=w0, seed=9)
           for r in range(w0)]
    for ld in first + ref:
        take(ld, 5 * ld.accumulation)
    states = [ld.state_dict() for ld in first]
    assert all(s == states[0] for s in states)  # the state does not depend on the rank
    resumed = [StreamingLoader(cfg_for(d), micro_batch=b1, global_batch=g, rank=r, world_size=w1, seed=9)
               for r in range(w1)]
    for ld in resumed:
        ld.load_state_dict(states[0])
    got, want = rest_of_epoch(resumed), rest_of_epoch(ref)
    assert got == want  # the same windows in every remaining step
    flat = [w for step in got for w in step]
    assert len(flat) == len(set(flat))


def test_resume_with_another_global_batch_continues_from_consumed(corpus):
    d, _, manifest = corpus
    cat = catalogue(manifest)
    ld = StreamingLoader(cfg_for(d), micro_batch=4, global_batch=12, seed=2)
    seen = wins(take(ld, 3 * ld.accumulation))
    resumed = StreamingLoader(cfg_for(d), micro_batch=2, global_batch=10, seed=2)
    resumed.load_state_dict(ld.state_dict())
    rest = wins(list(resumed))
    order = [cat[i] for i in ld.order(0)]
    assert seen == order[:36]
    assert rest == order[36 : 36 + (len(cat) - 36) // 10 * 10]


# -- windows, beat, style and transposition ---------------------------------------------------------------------------
def reference_window(notes, s, shift, cfg=None):
    """(L+1, N, 3) rows for steps [s-1, s+L), cut from the whole piece without the loader's shortcuts."""
    cfg = ReprConfig() if cfg is None else cfg
    roll = notes_to_roll(notes, cfg, 0, s + SEQ, shift)
    return np.concatenate([np.zeros((1, *roll.shape[1:]), np.float32), roll])[s:]


def test_windows_match_the_pieces_and_transposition_stays_in_range(corpus):
    d, pieces, _ = corpus
    train = pieces["train"]
    shifts = {}
    for epoch in range(2):
        ld = StreamingLoader(cfg_for(d, transpose=6), micro_batch=8, global_batch=8, seed=1)
        ld.load_state_dict({**ld.state_dict(), "epoch": epoch})
        for batch in ld:
            assert batch["prev"].data_ptr() == batch["notes"].data_ptr()
            assert torch.equal(batch["target"], batch["notes"][:, 1:])
            for j, (p, s, shift) in enumerate(batch["window"].tolist()):
                style, notes = train[p]
                win = batch["notes"][j].numpy()
                assert np.array_equal(win, reference_window(notes, s, shift))
                # No note pushed out of range: as many sounding cells as the untransposed window.
                assert win[..., 0].sum() == reference_window(notes, s, 0)[..., 0].sum()
                assert torch.equal(batch["beat"][j], (s + torch.arange(SEQ)) % 16)
                assert batch["style"][j].tolist() == [float(i == style) for i in range(len(STYLES))]
                shifts[epoch, p, s] = shift
    values = list(shifts.values())
    assert min(values) >= -6 and max(values) <= 6 and len(set(values)) == 13
    same = [shifts[0, p, s] == shifts[1, p, s] for (e, p, s) in shifts if e == 0 and (1, p, s) in shifts]
    assert 0.05 < np.mean(same) < 0.6  # varies across epochs, a function of (seed, epoch, window)
    again = StreamingLoader(cfg_for(d, transpose=6), micro_batch=8, global_batch=8, seed=1)
    first = next(iter(again))
    assert [shifts[0, p, s] == t for p, s, t in first["window"].tolist()] == [True] * 8


@pytest.mark.parametrize("kw", [{"transpose": 0}, {"augment": False}])
def test_no_transposition_when_off(corpus, kw):
    d, pieces, _ = corpus
    cfg = cfg_for(d, transpose=kw.get("transpose", 6))
    ld = StreamingLoader(cfg, micro_batch=16, global_batch=16, augment=kw.get("augment", True))
    for batch in take(ld, 10):
        assert batch["window"][:, 2].abs().sum() == 0
        p, s, _ = batch["window"][0].tolist()
        assert np.array_equal(batch["notes"][0].numpy(), reference_window(pieces["train"][p][1], s, 0))


def test_validation_batches_are_fixed_and_spread(corpus):
    d, pieces, manifest = corpus
    cat = catalogue(manifest, "val")  # 9 + 1 + 24 = 34 windows

    def run(r, n):
        return list(validation_batches(cfg_for(d), micro_batch=4, rank=r, world_size=2, num_batches=n))

    a, b = run(0, 4), run(1, 4)
    assert_same(a, run(0, 4))
    seen = wins(a) + wins(b)
    assert len(set(seen)) == 32 and set(seen) <= set(cat)
    assert all(batch["window"][:, 2].abs().sum() == 0 for batch in a)
    cycled = wins(run(0, 10)) + wins(run(1, 10))
    assert len(cycled) == 80 and set(cycled) == set(cat)


# -- bad shards ------------------------------------------------------------------------------------------------------
def damaged_copy(corpus_dir: Path, out: Path, how: str) -> tuple[str, set[int]]:
    """A copy of the corpus with train-000002.tar damaged -> (its name, the split's pieces the damage makes bad).

    Pieces are verified one by one (their crc32 in the piece index), so damage counts where a piece's bytes lie:
    "corrupt" overwrites the bytes of the shard's middle piece, "blob" flips one bit in its first piece's notes;
    "truncated" and "missing" make every piece of the shard bad. (Damage to tar headers only, which the loader never
    reads, goes unnoticed by it and changes no window.)"""
    shutil.copytree(corpus_dir, out)
    name = "train-000002.tar"
    path = out / name
    manifest = Manifest.load(out)
    k = [s.name for s in manifest.shards].index(name)
    first = manifest.shard_first_piece()
    rec = manifest.pieces.records(np.arange(first[k], first[k + 1]))
    everything = set(range(int(first[k]), int(first[k + 1])))  # the train split's pieces come first
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
        return name, everything
    if how == "corrupt":
        mid = len(rec) // 2
        a, n = int(rec["offset"][mid]), int(rec["length"][mid])
        data[a : a + n] = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
        return name, {int(first[k]) + mid}
    if how == "blob":  # one flipped bit inside a piece's compressed notes: the tar itself still parses
        data[data.index(b"DJN1") + 7] ^= 0x10
        path.write_bytes(bytes(data))
        return name, {int(first[k])}
    path.unlink()
    return name, everything


@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_truncated_or_missing_shard_is_named_at_start(corpus, tmp_path, how):
    d, _, _ = corpus
    name, _ = damaged_copy(d, tmp_path / "c", how)
    with pytest.raises(ShardError, match=name):
        StreamingLoader(cfg_for(tmp_path / "c"), micro_batch=4, global_batch=4)


@pytest.mark.parametrize("how, workers", [("corrupt", 0), ("blob", 0),
                                         pytest.param("corrupt", 2, marks=pytest.mark.slow)])
def test_corrupt_shard_raises_naming_it(corpus, tmp_path, how, workers):
    d, _, _ = corpus
    name, _ = damaged_copy(d, tmp_path / "c", how)
    ld = StreamingLoader(cfg_for(tmp_path / "c", workers=workers), micro_batch=4, global_batch=8)
    with deadline(60), pytest.raises(ShardError, match=rf"{name}: piece \d+ .*crc32 differs"):
        for _ in ld:
            pass


@pytest.mark.parametrize("how, pool, workers", [("corrupt", POOL_MB, 0), ("truncated", 1, 0), ("blob", POOL_MB, 0),
                                                pytest.param("corrupt", 1, 2, marks=pytest.mark.slow)])
def test_skip_mode_finishes_the_epoch(corpus, tmp_path, how, pool, workers):
    d, _, _ = corpus
    name, bad_pieces = damaged_copy(d, tmp_path / "c", how)
    runs = []
    for w in sorted({0, workers}):
        ld = StreamingLoader(cfg_for(tmp_path / "c", on_error="skip", shuffle_mb=pool, workers=w),
                             micro_batch=4, global_batch=8)
        expected = ld.steps_per_epoch() * ld.accumulation
        with deadline(60), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batches = list(ld) + list(ld)  # two epochs: the shard is reported once
        assert len(batches) == 2 * expected
        assert [str(c.message) for c in caught if c.category is ShardSkipped and name in str(c.message)] != []
        assert len([c for c in caught if c.category is ShardSkipped]) == 1
        assert list(ld.skipped_shards) == [name]
        assert not bad_pieces & {p for p, _ in wins(batches)}
        runs.append(batches)
    assert_same(runs[0], runs[-1])


def test_config_errors(corpus):
    d, _, _ = corpus
    with pytest.raises(ConfigError, match=r"train.global_batch=12 is not a multiple of train.micro_batch \(4\) x "
                                          r"world size \(2\) = 8"):
        StreamingLoader(cfg_for(d), micro_batch=4, global_batch=12, world_size=2)
    with pytest.raises(ShardError, match="no shards for split 'test'"):
        StreamingLoader(cfg_for(d), "test", micro_batch=4, global_batch=4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StreamingLoader(cfg_for(d), "val", micro_batch=64, global_batch=64)
    with pytest.raises(ShardError, match="manifest.json not found"):
        StreamingLoader(cfg_for(d / "nowhere"), micro_batch=4, global_batch=4)


def test_accumulation_steps_is_the_one_batch_check(corpus):
    """global = micro x accumulation x world, checked in one place (the loader, deepj.train, launch plan)."""
    assert accumulation_steps(24, 4, 3) == 2 and accumulation_steps(8, 8, 1) == 1
    for g, m, w in ((12, 4, 2), (0, 4, 1), (-8, 4, 2)):
        with pytest.raises(ConfigError, match=f"train.global_batch={g} .*micro"):
            accumulation_steps(g, m, w)
    with pytest.raises(ConfigError, match="train.micro_batch=0"):
        accumulation_steps(8, 0, 1)
    # a manifest read once by the caller gives the same loader as one read from data.dir
    d, _, _ = corpus
    given = StreamingLoader(cfg_for(d), micro_batch=2, global_batch=8, seed=3, manifest=Manifest.load(d))
    read = StreamingLoader(cfg_for(d), micro_batch=2, global_batch=8, seed=3)
    assert given.corpus == read.corpus and np.array_equal(given.order(1), read.order(1))


def test_group_style_trains_the_group_mixtures(tmp_path):
    """data.group_style: about that share of training windows carry the mixture of their style group (period), the
    rest their own leaf's one-hot; the choice is a function of the window (same on resume); validation stays leaf."""
    styles = ["baroque/bach", "baroque/corelli", "baroque/handel", "folk/essen"]
    rng = np.random.default_rng(0)
    pieces = [(i % 4, random_piece(rng, 200)) for i in range(8)]
    d = tmp_path / "c"
    write_corpus(d, {"train": pieces, "val": pieces[:4]}, shard_bytes=6000, styles=styles)
    mixture = {0: [1 / 3, 1 / 3, 1 / 3, 0], 1: [1 / 3, 1 / 3, 1 / 3, 0], 2: [1 / 3, 1 / 3, 1 / 3, 0], 3: [0, 0, 0, 1]}
    loader = StreamingLoader(cfg_for(d, group_style=0.5), micro_batch=16, global_batch=16, seed=3)
    batches = take(loader, 20)
    grouped = total = 0
    for b in batches:
        for (piece, _, _), row in zip(b["window"].tolist(), b["style"]):
            leaf = pieces[piece][0]
            one_hot = torch.eye(4)[leaf]
            group = torch.tensor(mixture[leaf])
            assert torch.allclose(row, one_hot) or torch.allclose(row, group)
            if leaf < 3:  # folk/essen is its group's only leaf: both are the same vector
                total += 1
                grouped += int(torch.allclose(row, group))
    assert 0.4 < grouped / total < 0.6, (grouped, total)
    again = take(StreamingLoader(cfg_for(d, group_style=0.5), micro_batch=16, global_batch=16, seed=3), 20)
    assert all(torch.equal(a["style"], b["style"]) for a, b in zip(batches, again))
    for b in validation_batches(cfg_for(d, group_style=1.0), micro_batch=8, rank=0, world_size=1, num_batches=2):
        assert torch.equal(b["style"].max(1).values, torch.ones(8))  # one-hots only
    with pytest.raises(ConfigError, match="data.group_style"):
        cfg_for(d, group_style=1.5)

