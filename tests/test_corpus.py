"""Corpus sources: folder tree styles, MAESTRO CSV labels and splits, and the demo corpus built from music21."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from deepj.corpus import CorpusError, Piece, open_corpus
from deepj.corpus.folder import read_folder
from deepj.corpus.maestro import read_maestro
from deepj.corpus.periods import COMPOSER_PERIODS, PeriodsError, composer_slug, load_periods

MAESTRO_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "maestro" / "maestro-v3.0.0.csv"
if not MAESTRO_CSV.is_file():  # the checkout may live elsewhere; the shared data folder does not move
    MAESTRO_CSV = Path("/work/shared/data/maestro/maestro-v3.0.0.csv")


def write_piece(path: Path, steps: int = 64, base: int = 60, seed: int = 0) -> Path:
    """A real MIDI file of `steps` 16th notes at 120 bpm (eighth notes of random pitch near `base`)."""
    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120.0)
    inst = pretty_midi.Instrument(program=0)
    sixteenth = 60.0 / 120.0 / 4
    for s in range(0, steps, 2):
        inst.notes.append(pretty_midi.Note(velocity=int(rng.integers(40, 120)), pitch=base + int(rng.integers(0, 12)),
                                           start=s * sixteenth, end=(s + 2) * sixteenth))
    pm.instruments.append(inst)
    path.parent.mkdir(parents=True, exist_ok=True)
    pm.write(str(path))
    return path


# --------------------------------------------------------------------------------------------------- folder

def test_folder_styles_from_tree(tmp_path):
    root = tmp_path / "midi"
    write_piece(root / "Baroque" / "Bach" / "b2.mid")
    write_piece(root / "baroque" / "bach" / "b1.MID")  # same style as Baroque/Bach once lower-cased
    write_piece(root / "baroque" / "handel" / "h.midi")
    write_piece(root / "classical" / "mozart" / "sonatas" / "k545.mid")  # three levels deep
    write_piece(root / "loose.mid")
    (root / "baroque" / "notes.txt").write_text("not a score")
    (root / "baroque" / "bach" / "cover.jpg").write_bytes(b"\xff\xd8")
    (root / "odd.mid").mkdir()  # a folder named like a MIDI file: listed, so the report can name it
    corpus = read_folder(root)
    got = [(p.path.relative_to(root).as_posix(), p.style, p.split) for p in corpus.pieces]
    assert got == [
        ("Baroque/Bach/b2.mid", "baroque/bach", None),
        ("baroque/bach/b1.MID", "baroque/bach", None),
        ("baroque/handel/h.midi", "baroque/handel", None),
        ("classical/mozart/sonatas/k545.mid", "classical/mozart/sonatas", None),
        ("loose.mid", "default", None),
        ("odd.mid", "default", None),
    ]
    assert corpus.kind == "folder" and corpus.skipped == []
    assert corpus.source(corpus.pieces[0]) == "Baroque/Bach/b2.mid"
    assert isinstance(corpus.pieces[0], Piece)


def test_open_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        open_corpus(str(tmp_path / "nope"))
    (tmp_path / "list.txt").write_text("x")
    with pytest.raises(CorpusError, match="not a .csv"):
        open_corpus(str(tmp_path / "list.txt"))
    with pytest.raises(CorpusError, match="--periods applies to the sources that name composers"):
        open_corpus(str(tmp_path), periods_file=tmp_path / "p.json")


# --------------------------------------------------------------------------------------------------- MAESTRO

@pytest.mark.parametrize("name, slug", [
    ("Frédéric Chopin", "chopin"),
    ("Sergei Rachmaninoff / György Cziffra", "rachmaninoff"),
    ("Ludwig van Beethoven", "beethoven"),
    ("Leoš Janáček", "janacek"),
    ("Nikolai Rimsky-Korsakov / Sergei Rachmaninoff", "rimsky-korsakov"),
    ("Camille Saint-Saëns", "saint-saens"),
    ("Antonín Dvořák", "dvorak"),
    ("chopin", "chopin"),
    ("", "unknown"),
])
def test_composer_slug(name, slug):
    assert composer_slug(name) == slug


def test_period_table_covers_every_maestro_composer():
    with open(MAESTRO_CSV, newline="", encoding="utf-8") as f:
        names = {n.strip() for row in csv.DictReader(f) for n in row["canonical_composer"].split("/")}
    assert len(names) == 54
    assert sorted(n for n in names if composer_slug(n) not in COMPOSER_PERIODS) == []
    assert set(COMPOSER_PERIODS.values()) == {"baroque", "classical", "romantic", "modern"}
    assert [COMPOSER_PERIODS[s] for s in ("bach", "mozart", "chopin", "berg")] == \
        ["baroque", "classical", "romantic", "modern"]


def test_maestro_labels_splits_and_missing(tmp_path):
    rows = [
        "canonical_composer,canonical_title,split,year,midi_filename,audio_filename,duration",
        "Frédéric Chopin,Ballade,train,2004,2004/a.midi,2004/a.wav,1.0",
        "Johann Sebastian Bach / Ferruccio Busoni,Chaconne,validation,2006,2006/b.midi,2006/b.wav,1.0",
        "Wolfgang Amadeus Mozart,Sonata,test,2008,2008/c.midi,2008/c.wav,1.0",
        "Hildegard Unknownova,Chant,train,2009,2009/d.midi,2009/d.wav,1.0",
        "Wolfgang Amadeus Mozart,Sonata,test,2008,2008/gone.midi,2008/gone.wav,1.0",
    ]
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    for name in ("2004/a.midi", "2006/b.midi", "2008/c.midi", "2009/d.midi"):
        write_piece(tmp_path / name)
    corpus = read_maestro(csv_path)
    got = [(corpus.source(p), p.style, p.split) for p in corpus.pieces]
    assert got == [
        ("2004/a.midi", "romantic/chopin", "train"),
        ("2006/b.midi", "baroque/bach", "val"),
        ("2008/c.midi", "classical/mozart", "test"),
        ("2009/d.midi", "other/unknownova", "train"),
    ]
    assert corpus.skipped == [{"file": "2008/gone.midi", "reason": "missing", "detail": "listed on line 6 of m.csv"}]
    assert corpus.report["unknown_composers"] == {"Hildegard Unknownova": 1}
    assert corpus.report["splits_listed"] == ["test", "train", "val"]

    periods = tmp_path / "periods.json"
    periods.write_text(json.dumps({"Frédéric Chopin": "Polish", "unknownova": "medieval"}))
    assert load_periods(periods) == {"chopin": "polish", "unknownova": "medieval"}
    styles = [p.style for p in read_maestro(csv_path, periods).pieces]
    assert styles == ["polish/chopin", "baroque/bach", "classical/mozart", "medieval/unknownova"]


def test_maestro_bad_csv(tmp_path):
    bad = tmp_path / "no_midi.csv"
    bad.write_text("canonical_composer,split,audio_filename\nFrédéric Chopin,train,a.wav\n")
    with pytest.raises(CorpusError, match=r"no_midi.csv: required column 'midi_filename' is missing"):
        read_maestro(bad)
    split = tmp_path / "split.csv"
    split.write_text("canonical_composer,split,midi_filename\nFrédéric Chopin,holdout,a.mid\n")
    with pytest.raises(CorpusError, match=r"line 2: split 'holdout'"):
        read_maestro(split)
    periods = tmp_path / "p.json"
    periods.write_text('{"chopin": "a/b"}')
    with pytest.raises(PeriodsError, match="must be a plain name"):
        load_periods(periods)
    with pytest.raises(CorpusError, match="must be a plain name"):
        read_maestro(split, periods)


# --------------------------------------------------------------------------------------------------- demo

def test_demo_selection_caps_and_labels():
    from deepj.corpus.demo import DEMO_SOURCES, select_tasks

    tasks = select_tasks(per_composer=5)
    per_style = Counter(t.out.rsplit("/", 1)[0] for t in tasks)
    assert set(s.split("/")[0] for s in per_style) == {"renaissance", "baroque", "classical", "folk"}
    assert {f"{s.period}/{s.composer}" for s in DEMO_SOURCES} == set(per_style)
    assert max(per_style.values()) == 5 and per_style["baroque/handel"] == 1
    assert len({t.out for t in tasks}) == len(tasks)  # no two scores write one file
    # the cap samples the whole collection: Bach's 5 chorales come from across the BWV range, not the first 5 names
    bach = sorted(t.src for t in tasks if "/bach/" in t.out)
    assert len({Path(s).name[:4] for s in bach}) > 1
    # folk collections are split into tunes; Josquin's voices (tunes sharing a title) stay one piece
    assert all(t.number is not None for t in tasks if "/airds/" in t.out)
    assert all(t.number is None for t in tasks if "/josquin/" in t.out)
    assert not [t for t in tasks if "/beethoven/" in t.out and Path(t.src).stat().st_size > 70_000]


@pytest.mark.slow
def test_demo_build_small(tmp_path):
    from deepj.corpus.demo import DONE, SKIPPED, build_demo_corpus
    from deepj.music.midi_io import read_midi, read_tick_notes
    from deepj.music.representation import ReprConfig

    root = build_demo_corpus(tmp_path / "cache", per_composer=2, workers=2, progress=False)
    files = sorted(root.glob("*/*/*.mid"))
    styles = Counter(f.parent.relative_to(root).as_posix() for f in files)
    assert {s.split("/")[0] for s in styles} == {"renaissance", "baroque", "classical", "folk"}
    for style in ("renaissance/palestrina", "baroque/bach", "classical/haydn", "folk/ryans"):
        assert styles[style] >= 1, style
    assert max(styles.values()) <= 2
    marker = json.loads((root / DONE).read_text())
    assert marker["pieces"] == len(files) and marker["settings"]["per_composer"] == 2
    assert min(marker["in_range_min"].values()) > 0.5
    assert isinstance(json.loads((root / SKIPPED).read_text()), list)
    cfg = ReprConfig()
    for f in files:
        notes = read_midi(f, cfg)
        pitch = read_tick_notes(f)[0]
        assert len(notes) > 10, f
        assert ((pitch >= 36) & (pitch < 84)).mean() > 0.5, f
    t0 = time.time()
    assert build_demo_corpus(tmp_path / "cache", per_composer=2, progress=False) == root
    assert time.time() - t0 < 1.0  # DONE matches: nothing is converted again
