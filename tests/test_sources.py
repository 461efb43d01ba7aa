"""Corpus sources that name composers: GiantMIDI-Piano (file names), ATEPP (metadata CSV), Aria-MIDI (metadata JSON),
each on small real MIDI files laid out and described the way the release documents; and open_corpus's dispatch."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from midi_files import MidiSpec, Q, note, track, write_spec

from deepj.corpus import CorpusError, CorpusOptions, open_corpus
from deepj.corpus.aria import read_aria
from deepj.corpus.atepp import read_atepp
from deepj.corpus.giantmidi import parse_name, read_giantmidi


def put_midi(path: Path, pitch: int = 60) -> Path:
    """A real two-note MIDI file at `path` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_spec(MidiSpec([track(note(0, 4 * Q, pitch), note(4 * Q, 8 * Q, pitch + 2))]), path)


def got(corpus):
    return [(corpus.source(p), p.style, p.split) for p in corpus.pieces]


def reasons(corpus):
    return sorted((s["file"], s["reason"]) for s in corpus.skipped)


# --------------------------------------------------------------------------------------------------- GiantMIDI-Piano

CHOPIN = "Chopin, Frédéric, Études, Op.10, g0hoN6_HDVU.mid"  # a name of the repository's midis_preview/
GIANT_FILES = [
    CHOPIN,
    "Bach, Johann Sebastian, Prelude and Fugue in C major, BWV 846, gCL5Zvnt0TU.mid",  # ", " inside the title
    "Liszt, Franz, Hungarian Rhapsody No.2, S.244_2, LdH1hSWGFGU.mid",  # "/" written "_"
    "Dvořák, Antonín, Humoresque, Op.101 No.7, Ab-_9xYz012.mid",
    "Unknownova, Hildegard, Chant, zzzzzzzzzzz.mid",
    "Zzyzx, , Air, 12345678901.mid",  # no first name
]


def giant_tree(root: Path) -> Path:
    for i, name in enumerate(GIANT_FILES):
        put_midi(root / "midis" / name, 60 + i)
    put_midi(root / "midis" / "Chopin - Nocturne.mid")  # not the release's form
    put_midi(root / "midis" / "Chopin, Frédéric, Nocturne, short-id.mid")  # not an 11-character YouTube id
    put_midi(root / "surname_checked_midis" / CHOPIN)  # the curated subset is a copy
    (root / "midis" / "README.txt").write_text("not a score")
    return root


def test_giantmidi_name_parsing():
    name = parse_name("Bach, Johann Sebastian, Prelude and Fugue in C major, BWV 846, gCL5Zvnt0TU.mid")
    assert name.surname == "Bach" and name.firstname == "Johann Sebastian"
    assert name.title == "Prelude and Fugue in C major, BWV 846" and name.youtube_id == "gCL5Zvnt0TU"
    assert name.composer == "Johann Sebastian Bach" and name.shown == "Bach, Johann Sebastian"
    bare = parse_name("Zzyzx, , Air, 12345678901.MID")
    assert (bare.composer, bare.shown, bare.title) == ("Zzyzx", "Zzyzx", "Air")
    for bad in ("Chopin - Nocturne.mid", "Chopin, Frédéric, g0hoN6_HDVU.mid", "Chopin, F, T, g0hoN6_HDVU.wav",
                ", Frédéric, T, g0hoN6_HDVU.mid", "Chopin, F, T, g0hoN6_HDV.mid"):
        assert parse_name(bad) is None, bad


def test_giantmidi_styles_skipped_report(tmp_path):
    root = giant_tree(tmp_path / "giant")
    corpus = read_giantmidi(root)
    assert corpus.kind == "giantmidi" and corpus.root == root
    assert got(corpus) == [
        ("midis/Bach, Johann Sebastian, Prelude and Fugue in C major, BWV 846, gCL5Zvnt0TU.mid", "baroque/bach", None),
        (f"midis/{CHOPIN}", "romantic/chopin", None),
        ("midis/Dvořák, Antonín, Humoresque, Op.101 No.7, Ab-_9xYz012.mid", "romantic/dvorak", None),
        ("midis/Liszt, Franz, Hungarian Rhapsody No.2, S.244_2, LdH1hSWGFGU.mid", "romantic/liszt", None),
        ("midis/Unknownova, Hildegard, Chant, zzzzzzzzzzz.mid", "other/unknownova", None),
        ("midis/Zzyzx, , Air, 12345678901.mid", "other/zzyzx", None),
    ]
    assert reasons(corpus) == [
        ("midis/Chopin - Nocturne.mid", "unparsed-name"),
        ("midis/Chopin, Frédéric, Nocturne, short-id.mid", "unparsed-name"),
        (f"surname_checked_midis/{CHOPIN}", "duplicate"),
    ]
    dup = next(s for s in corpus.skipped if s["reason"] == "duplicate")
    assert dup["detail"] == f"the recording g0hoN6_HDVU is read from midis/{CHOPIN}"
    assert corpus.report["unknown_composers"] == {"Unknownova, Hildegard": 1, "Zzyzx": 1}
    assert corpus.report["rows"] == 9 and corpus.report["splits_listed"] == []
    assert corpus.report["composers"] == 6 and corpus.report["unknown_composer_rule"] == "other"

    skip = read_giantmidi(root, CorpusOptions(source="giantmidi", unknown_composers="skip"))
    assert [p.style for p in skip.pieces] == ["baroque/bach", "romantic/chopin", "romantic/dvorak", "romantic/liszt"]
    unknown = [s for s in skip.skipped if s["reason"] == "unknown-composer"]
    assert [s["file"] for s in unknown] == ["midis/Unknownova, Hildegard, Chant, zzzzzzzzzzz.mid",
                                            "midis/Zzyzx, , Air, 12345678901.mid"]
    assert "'Unknownova, Hildegard' is not in the period table" in unknown[0]["detail"]
    assert skip.report["unknown_composers"] == {"Unknownova, Hildegard": 1, "Zzyzx": 1}

    periods = tmp_path / "periods.json"
    periods.write_text(json.dumps({"Chopin": "polish", "Hildegard Unknownova": "medieval"}))
    styles = [p.style for p in read_giantmidi(root, CorpusOptions(periods_file=periods)).pieces]
    assert "polish/chopin" in styles and "medieval/unknownova" in styles


def test_giantmidi_through_open_corpus(tmp_path):
    root = giant_tree(tmp_path / "giant")
    corpus = open_corpus(str(root / "midis"), CorpusOptions(source="giantmidi"))
    assert corpus.kind == "giantmidi" and len(corpus.pieces) == 6 and corpus.root == root / "midis"
    # auto reads the same folder as a tree (one style, `default`), and says how to label its composers
    tree = open_corpus(str(root / "midis"))
    assert tree.kind == "folder" and {p.style for p in tree.pieces} == {"default"}
    assert "hint" not in tree.report  # 6 of its 8 names parse: below the 90 % that makes a hint
    (root / "midis" / "Chopin - Nocturne.mid").unlink()
    (root / "midis" / "Chopin, Frédéric, Nocturne, short-id.mid").unlink()
    assert "--source giantmidi" in open_corpus(str(root / "midis")).report["hint"]
    with pytest.raises(CorpusError, match="is not a folder; GiantMIDI-Piano is a folder"):
        open_corpus(str(root / "midis" / CHOPIN), CorpusOptions(source="giantmidi"))


# --------------------------------------------------------------------------------------------------- ATEPP

ATEPP_HEADER = "artist,artist_id,track,track_duration,composer,composition_id,score_path,midi_path,youtube_links"
MELODIE = "Sergei_Rachmaninoff/Four_Pieces_(originally_Op.1)/3._Mélodie/00001.mid"  # a row of ATEPP-metadata-1.1.csv
ATEPP_ROWS = [
    f"Vladimir Ashkenazy,6.0,Four Pieces (originally Op.1): 3. Mélodie,218.253,Sergei Rachmaninoff,0,,{MELODIE},"
    "https://www.youtube.com/watch?v=2pNrdpv2n0Q",
    'Arturo Benedetti Michelangeli,10.0,"Faschingsschwank aus Wien, Op. 26: III. Scherzino",141.4,Robert Schumann,'
    '252,,"Robert_Schumann/Faschingsschwank_aus_Wien,_Op._26/III._Scherzino/01287.mid",'
    "https://www.youtube.com/watch?v=FJDwjW4-tVY",
    "Zoltán Kocsis,12.0,Allegro barbaro,150.0,Béla Bartók,300,,Béla_Bartók/Allegro_barbaro/02000.mid,",
    "Some Pianist,99.0,Chant,60.0,Hildegard Unknownova,400,,Hildegard_Unknownova/Chant/03000.mid,",
    "Martha Argerich,3.0,Gone,100.0,Frédéric Chopin,500,,Frederic_Chopin/Gone/04000.mid,",  # listed, not there
    f"Vladimir Ashkenazy,6.0,Again,218.253,Sergei Rachmaninoff,0,,{MELODIE},",  # listed twice
]


def atepp_tree(root: Path) -> Path:
    csv_path = root / "ATEPP-metadata-1.1.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text("\n".join([ATEPP_HEADER, *ATEPP_ROWS]) + "\n", encoding="utf-8")
    put_midi(root / MELODIE)
    put_midi(root / "Robert_Schumann/Faschingsschwank_aus_Wien,_Op._26/III._Scherzino/01287.mid")
    # stored decomposed (as an archive made on macOS holds it) while the CSV writes it composed
    put_midi(root / unicodedata.normalize("NFD", "Béla_Bartók/Allegro_barbaro/02000.mid"))
    put_midi(root / "Hildegard_Unknownova/Chant/03000.mid")
    return csv_path


def test_atepp_styles_skipped_report(tmp_path):
    csv_path = atepp_tree(tmp_path / "atepp")
    corpus = read_atepp(csv_path)
    nfd_bartok = unicodedata.normalize("NFD", "Béla_Bartók/Allegro_barbaro/02000.mid")
    assert corpus.kind == "atepp" and corpus.root == csv_path.parent
    assert got(corpus) == [
        (nfd_bartok, "modern/bartok", None),  # found under its decomposed name, named so in shards and reports
        ("Hildegard_Unknownova/Chant/03000.mid", "other/unknownova", None),
        ("Robert_Schumann/Faschingsschwank_aus_Wien,_Op._26/III._Scherzino/01287.mid", "romantic/schumann", None),
        (MELODIE, "romantic/rachmaninoff", None),
    ]
    assert corpus.skipped == [
        {"file": "Frederic_Chopin/Gone/04000.mid", "reason": "missing",
         "detail": "listed on line 6 of ATEPP-metadata-1.1.csv"},
        {"file": MELODIE, "reason": "duplicate", "detail": "listed on line 2 and again on line 7"},
    ]
    assert corpus.report["rows"] == 6 and corpus.report["splits_listed"] == []
    assert corpus.report["unknown_composers"] == {"Hildegard Unknownova": 1} and "hint" not in corpus.report

    skip = open_corpus(str(csv_path), CorpusOptions(unknown_composers="skip"))
    assert skip.kind == "atepp" and len(skip.pieces) == 3
    assert ("Hildegard_Unknownova/Chant/03000.mid", "unknown-composer") in reasons(skip)

    # the CSV kept apart from the MIDI tree: every file missing, and the report says where midi_path is read from
    alone = tmp_path / "elsewhere" / "ATEPP-metadata-1.1.csv"
    alone.parent.mkdir()
    alone.write_text(csv_path.read_text(encoding="utf-8"), encoding="utf-8")
    lost = read_atepp(alone)
    assert lost.pieces == [] and "relative to the CSV's folder" in lost.report["hint"]


def test_atepp_malformed_csv(tmp_path):
    short = tmp_path / "short.csv"
    short.write_text("\n".join([ATEPP_HEADER, ATEPP_ROWS[0], "Someone,1.0,Piece,10.0,Frédéric Chopin"]) + "\n",
                     encoding="utf-8")
    with pytest.raises(CorpusError, match=r"short.csv, line 3: 5 fields where the header has 9"):
        read_atepp(short)
    long = tmp_path / "long.csv"
    long.write_text("\n".join([ATEPP_HEADER, ATEPP_ROWS[0] + ",extra,more"]) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"long.csv, line 2: 11 fields where the header has 9"):
        read_atepp(long)
    empty = tmp_path / "empty.csv"
    empty.write_text(f"{ATEPP_HEADER}\nA,1.0,T,1.0,Frédéric Chopin,1,,  ,\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"empty.csv, line 2: empty midi_path"):
        read_atepp(empty)
    no_col = tmp_path / "no_col.csv"
    no_col.write_text("artist,composer,track\nA,Frédéric Chopin,T\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"no_col.csv: required column 'midi_path' is missing"):
        read_atepp(no_col)


# --------------------------------------------------------------------------------------------------- Aria-MIDI

ARIA_METADATA = {  # the release's metadata.json form; tag values as the release writes them (lower-case surnames)
    "1": {"metadata": {"composer": "chopin", "genre": "classical", "form": "nocturne"},
          "audio_scores": {"0": 0.99, "1": 0.62}},
    "2": {"metadata": {"composer": "bach", "music_period": "baroque"}, "audio_scores": {"0": 0.95, "1": 0.9}},
    "3": {"metadata": {"genre": "pop"}, "audio_scores": {"0": 0.97}},  # no composer tag
    "4": {"metadata": {"composer": "dvořák"}, "audio_scores": {"0": 0.8}},
    "5": {"metadata": {"composer": "unknownova"}, "audio_scores": {"0": 0.75}},
    "6": {"metadata": {"composer": "mozart"}, "audio_scores": {"0": 0.9}},  # no file: another subset's recording
    "8": {"metadata": {"composer": ["schumann", "liszt"]}, "audio_scores": {}},  # a list: its first name
}


def aria_tree(root: Path) -> Path:
    data = root / "data"
    for name in ("000001_0.mid", "000001_1.mid", "000002_0.mid", "000004_0.mid"):
        put_midi(data / "aa" / name)
    put_midi(data / "ab" / "3_0.mid")  # an id not zero-padded matches its key all the same
    put_midi(data / "ab" / "5_0.mid")
    put_midi(data / "ab" / "000007_0.mid")  # a recording the metadata does not list
    put_midi(data / "ab" / "8_0.mid")
    put_midi(data / "ab" / "cover.mid")
    put_midi(data / "ac" / "000001_0.mid")  # the same segment again
    meta = root / "metadata.json"
    meta.write_text(json.dumps(ARIA_METADATA, ensure_ascii=False, indent=2), encoding="utf-8")
    return meta


def test_aria_styles_skipped_report(tmp_path):
    meta = aria_tree(tmp_path / "aria-midi-v1-deduped-ext")
    corpus = read_aria(meta)
    assert corpus.kind == "aria" and corpus.root == meta.parent
    assert got(corpus) == [
        ("data/aa/000001_0.mid", "romantic/chopin", None),
        ("data/aa/000001_1.mid", "romantic/chopin", None),
        ("data/aa/000002_0.mid", "baroque/bach", None),
        ("data/aa/000004_0.mid", "romantic/dvorak", None),
        ("data/ab/5_0.mid", "other/unknownova", None),
        ("data/ab/8_0.mid", "romantic/schumann", None),
    ]
    assert reasons(corpus) == [
        ("data/aa/000002_1.mid", "missing"),
        ("data/ab/000007_0.mid", "no-metadata"),
        ("data/ab/3_0.mid", "no-composer"),
        ("data/ab/cover.mid", "unparsed-name"),
        ("data/ac/000001_0.mid", "duplicate"),
    ]
    report = corpus.report
    assert report["unknown_composers"] == {"unknownova": 1} and report["rows"] == 7 and report["files"] == 10
    assert report["no_composer_tag"] == 1 and report["below_min_composer_confidence"] == 0
    assert report["recordings_without_files"] == 1 and report["splits_listed"] == []

    # the confidence compared is the segment's audio score; a segment without one passes only at 0
    strict = read_aria(meta, CorpusOptions(min_composer_confidence=0.7))
    low = {s["file"]: s["detail"] for s in strict.skipped if s["reason"] == "no-composer"}
    assert low == {"data/aa/000001_1.mid": "audio score 0.62, below the minimum composer confidence 0.7",
                   "data/ab/3_0.mid": "recording 3 has no composer tag",
                   "data/ab/8_0.mid": "no audio score, below the minimum composer confidence 0.7"}
    assert strict.report["below_min_composer_confidence"] == 2 and len(strict.pieces) == 4
    assert len(read_aria(meta, CorpusOptions(min_composer_confidence=0.76)).pieces) == 3  # unknownova's 0.75 too

    skip = read_aria(meta, CorpusOptions(unknown_composers="skip"))
    assert ("data/ab/5_0.mid", "unknown-composer") in reasons(skip) and len(skip.pieces) == 5


def test_aria_jsonl_and_folder_spec(tmp_path):
    meta = aria_tree(tmp_path / "aria")
    lines = tmp_path / "aria" / "metadata.jsonl"
    lines.write_text("\n".join(json.dumps({k: v}, ensure_ascii=False) for k, v in ARIA_METADATA.items()) + "\n",
                     encoding="utf-8")
    assert got(read_aria(lines)) == got(read_aria(meta))
    by_folder = open_corpus(str(tmp_path / "aria"), CorpusOptions(source="aria"))
    assert by_folder.kind == "aria" and got(by_folder) == got(read_aria(meta))
    with pytest.raises(CorpusError, match="holds no metadata.json"):
        open_corpus(str(tmp_path / "aria" / "data"), CorpusOptions(source="aria"))


@pytest.mark.parametrize("text, message", [
    ('{"1": {"metadata": {"composer": "chopin"},\n "audio_scores": {"0": 0.9,}}}', r"line 2, column \d+: not valid"),
    ('[{"1": {}}]', "holds a JSON list, not an object"),
    ('{"one": {"metadata": {}}}', r"key 'one' is not a recording id"),
    ('{"1": ["chopin"]}', r"entry '1' is a JSON list"),
    ('{"1": {"metadata": {"composer": 7}}}', r"entry '1': the composer tag 7 is neither a name"),
    ('{"1": {"metadata": {}, "audio_scores": {"0": "high"}}}', r"entry '1': audio score 'high' of segment '0'"),
    ('{"1": {"metadata": {}, "audio_scores": {"first": 0.5}}}', r"entry '1': audio_scores key 'first'"),
])
def test_aria_malformed_metadata(tmp_path, text, message):
    meta = tmp_path / "metadata.json"
    meta.write_text(text, encoding="utf-8")
    with pytest.raises(CorpusError, match=r"metadata.json.*" + message):
        read_aria(meta)


def test_aria_malformed_jsonl_names_the_line(tmp_path):
    lines = tmp_path / "metadata.jsonl"
    lines.write_text('{"1": {"metadata": {"composer": "chopin"}}}\n\n{"2": {"metadata": \n{"1": {}}\n')
    with pytest.raises(CorpusError, match=r"metadata.jsonl, line 3, column \d+: not valid JSON"):
        read_aria(lines)
    lines.write_text('{"1": {"metadata": {}}}\n{"1": {"metadata": {}}}\n')
    with pytest.raises(CorpusError, match=r"metadata.jsonl, line 2: recording '1' is listed twice"):
        read_aria(lines)


# --------------------------------------------------------------------------------------------------- open_corpus

MAESTRO_HEADER = "canonical_composer,canonical_title,split,year,midi_filename,audio_filename,duration"


def test_open_corpus_detects_csv_kinds(tmp_path):
    maestro = tmp_path / "m" / "maestro-v3.0.0.csv"
    maestro.parent.mkdir()
    maestro.write_text(f"{MAESTRO_HEADER}\nFrédéric Chopin,Ballade,train,2004,2004/a.midi,2004/a.wav,1.0\n"
                       "Hildegard Unknownova,Chant,test,2009,2009/d.midi,2009/d.wav,1.0\n", encoding="utf-8")
    put_midi(tmp_path / "m" / "2004" / "a.midi")
    put_midi(tmp_path / "m" / "2009" / "d.midi")
    corpus = open_corpus(str(maestro))
    assert corpus.kind == "maestro" and [p.split for p in corpus.pieces] == ["train", "test"]
    assert corpus.report["unknown_composer_rule"] == "other"
    skip = open_corpus(str(maestro), CorpusOptions(unknown_composers="skip"))
    assert got(skip) == [("2004/a.midi", "romantic/chopin", "train")]
    assert [(s["file"], s["reason"]) for s in skip.skipped] == [("2009/d.midi", "unknown-composer")]

    atepp = atepp_tree(tmp_path / "a")
    assert open_corpus(str(atepp)).kind == "atepp"
    with pytest.raises(CorpusError, match="required column 'canonical_composer' is missing"):
        open_corpus(str(atepp), CorpusOptions(source="maestro"))  # an explicit source wins over the header

    other = tmp_path / "other.csv"
    other.write_text("title,file\nBallade,a.mid\n")
    with pytest.raises(CorpusError, match=r"neither a MAESTRO CSV's \(needs canonical_composer, split, "
                                          r"midi_filename\) nor an ATEPP metadata CSV's \(needs composer, midi_path\)"):
        open_corpus(str(other))


def test_open_corpus_options_and_legacy_periods(tmp_path):
    maestro = tmp_path / "m.csv"
    maestro.write_text(f"{MAESTRO_HEADER}\nFrédéric Chopin,Ballade,train,2004,a.midi,a.wav,1.0\n", encoding="utf-8")
    put_midi(tmp_path / "a.midi")
    periods = tmp_path / "periods.json"
    periods.write_text('{"chopin": "polish"}')
    # preprocess's call today: the periods file as the second positional argument, or as periods_file=
    for corpus in (open_corpus(str(maestro), str(periods)), open_corpus(str(maestro), periods),
                   open_corpus(str(maestro), periods_file=periods),
                   open_corpus(str(maestro), CorpusOptions(periods_file=periods), periods_file=periods)):
        assert [p.style for p in corpus.pieces] == ["polish/chopin"]
    with pytest.raises(CorpusError, match="two periods files given"):
        open_corpus(str(maestro), CorpusOptions(periods_file=periods), periods_file=tmp_path / "other.json")

    with pytest.raises(CorpusError, match="source 'midi' is not one of auto, folder, maestro, giantmidi"):
        CorpusOptions(source="midi")
    with pytest.raises(CorpusError, match="unknown_composers 'drop' is not one of other, skip"):
        CorpusOptions(unknown_composers="drop")
    with pytest.raises(CorpusError, match="min_composer_confidence 1.5 must be a number from 0 to 1"):
        CorpusOptions(min_composer_confidence=1.5)
    with pytest.raises(CorpusError, match="minimum composer confidence applies to Aria-MIDI only"):
        open_corpus(str(maestro), CorpusOptions(min_composer_confidence=0.5))

    put_midi(tmp_path / "tree" / "baroque" / "bach" / "x.mid")
    with pytest.raises(CorpusError, match="--periods applies to the sources that name composers"):
        open_corpus(str(tmp_path / "tree"), CorpusOptions(periods_file=periods))
    with pytest.raises(CorpusError, match="skipping unknown composers applies to the sources that name composers"):
        open_corpus(str(tmp_path / "tree"), CorpusOptions(unknown_composers="skip"))
    with pytest.raises(CorpusError, match="is not a folder; --source folder"):
        open_corpus(str(maestro), CorpusOptions(source="folder"))
    with pytest.raises(CorpusError, match="per_composer: settings of the demo corpus only"):
        open_corpus(str(tmp_path / "tree"), per_composer=2)
    with pytest.raises(CorpusError, match="demo is the built-in corpus; --source aria"):
        open_corpus("demo", CorpusOptions(source="aria"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CorpusError, match="not a .csv, .json or .jsonl"):
        open_corpus(str(tmp_path / "notes.txt"))
    assert open_corpus(str(aria_tree(tmp_path / "aria"))).kind == "aria"


# --------------------------------------------------------------------------------------------------- through preprocess

@pytest.mark.parametrize("kind", ["giantmidi", "atepp", "aria"])
def test_each_source_through_preprocess(tmp_path, kind):
    """The one documented command per release gives shards labelled by composer and period, and a report.json that
    lists every file left out: unknown composers (skipped with --unknown-composers skip), duplicates, missing files."""
    from deepj.data.manifest import Manifest
    from deepj.preprocess import main

    if kind == "giantmidi":
        spec, flags = giant_tree(tmp_path / "giant") / "midis", ["--source", "giantmidi"]
    elif kind == "atepp":
        spec, flags = atepp_tree(tmp_path / "atepp"), []
        put_midi(spec.parent / MELODIE, 62)  # every file its own notes (put_midi writes the same two by default)
        put_midi(spec.parent / "Hildegard_Unknownova/Chant/03000.mid", 64)
        put_midi(spec.parent / "Robert_Schumann/Faschingsschwank_aus_Wien,_Op._26/III._Scherzino/01287.mid", 66)
    else:
        spec, flags = aria_tree(tmp_path / "aria"), []
        for i, p in enumerate(sorted((tmp_path / "aria" / "data").rglob("*.mid"))):
            put_midi(p, 50 + i)
    out = tmp_path / "shards"
    assert main([str(spec), str(out), "--workers", "1", "--min-steps", "4", "--unknown-composers", "skip",
                 *flags]) == 0
    m = Manifest.load(out)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert m.settings["source"] == report["source"] == kind and m.settings["unknown_composers"] == "skip"
    assert m.representation.sustain
    assert not any(s.startswith("other/") for s in m.styles.styles)
    assert "unknown-composer" in report["counts"] and report["unknown_composers"]
    styles = set(m.styles.styles)
    expected = {"giantmidi": {"romantic/chopin", "baroque/bach", "romantic/liszt", "romantic/dvorak"},
                "atepp": {"romantic/rachmaninoff", "romantic/schumann", "modern/bartok"},
                "aria": {"romantic/chopin", "baroque/bach", "romantic/dvorak", "romantic/schumann"}}[kind]
    assert styles == expected
    assert len(m.pieces) + report["counts"].get("duplicate", 0) + sum(
        v for k, v in report["counts"].items() if k != "duplicate") == report["files_seen"]


@pytest.mark.parametrize("kind", ["atepp", "aria"])
def test_slices_of_a_metadata_corpus_read_as_the_whole(tmp_path, kind):
    """Preprocessing in slices (slurm/preprocess.sbatch) mirrors each slice's files with the metadata: ATEPP's CSV cut
    to the slice's rows, Aria-MIDI's metadata.json whole. Every piece of the whole corpus is in exactly one slice,
    with the style the whole gives it."""
    from deepj.preprocess_merge import make_slice_input

    spec = atepp_tree(tmp_path / "c") if kind == "atepp" else aria_tree(tmp_path / "c")
    whole = open_corpus(str(spec))
    seen, skipped = [], []
    for index in range(2):
        dst = tmp_path / f"slice{index}"
        make_slice_input(str(spec), dst, index=index, count=2)
        part = open_corpus(str(dst / spec.name))
        seen += [(part.source(p), p.style) for p in part.pieces]
        skipped += part.skipped
    assert sorted(seen) == sorted((whole.source(p), p.style) for p in whole.pieces) and seen
    # the same files left out for the same reasons (no segment "missing" from a slice; a CSV slice's line numbers are
    # its own)
    assert sorted((x["file"], x["reason"]) for x in skipped) == sorted((x["file"], x["reason"]) for x in whole.skipped)
