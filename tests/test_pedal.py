"""The sustain and sostenuto pedals (deepj.music.pedal), through both MIDI parsers, on real MIDI files written by hand.

Every case states its expected grid notes `(pitch, start, end, velocity)` in 16th-note steps (Q ticks each).
"""

from __future__ import annotations

import json

import mido
import numpy as np
import pytest
from midi_files import MidiSpec, Q, cc, note, random_spec, raw_midi, track, vlq, write_spec

from deepj.music.midi_io import _check_chunks, read_midi
from deepj.music.pedal import SOSTENUTO, SUSTAIN, scan
from deepj.music.representation import ReprConfig

PARSERS = ["symusic", "pretty_midi"]
SUSTAINED = ReprConfig(sustain=True)
BOTH = ReprConfig(sustain=True, sostenuto=True)
C, E, G = 60, 64, 67


def down(step, channel=0, value=127):
    return cc(step * Q, SUSTAIN, value, channel)


def up(step, channel=0, value=0):
    return cc(step * Q, SUSTAIN, value, channel)


def n(start, end, pitch, channel=0, velocity=100):
    return note(start * Q, end * Q, pitch, velocity, channel)


# name -> (spec, repr config, expected grid notes)
CASES = {
    # Three notes released one after another under one pedal: all sound until it lifts.
    "held-across-notes": (MidiSpec([track(down(0), n(0, 1, C), n(1, 2, E), n(2, 3, G), up(8))]), SUSTAINED,
                          [(C, 0, 8, 100), (E, 1, 8, 100), (G, 2, 8, 100)]),
    # The pedal does nothing without the setting (the reading of every shard made before it).
    "setting-off": (MidiSpec([track(down(0), n(0, 1, C), n(1, 2, E), up(8))]), ReprConfig(),
                    [(C, 0, 1, 100), (E, 1, 2, 100)]),
    # Struck again under the pedal: the first sounding note ends at the re-strike, the second is a re-strike that
    # sounds until the pedal lifts.
    "restrike": (MidiSpec([track(down(0), n(0, 1, C, velocity=60), n(4, 5, C, velocity=90), up(8))]), SUSTAINED,
                 [(C, 0, 4, 60), (C, 4, 8, 90)]),
    # Lifted and pressed again between two notes: the first ends at the lift, the second sounds to the last lift; a
    # note released at the very tick of a lift is not held, one released at the tick of a press is.
    "lift-and-press": (MidiSpec([track(down(0), n(0, 1, C), up(2), n(1, 2, E), n(2, 3, G), down(3), n(4, 5, E),
                                       up(8))]), SUSTAINED,
                       [(C, 0, 2, 100), (E, 1, 2, 100), (G, 2, 8, 100), (E, 4, 8, 100)]),
    # The pedal on another track of the same channel holds the notes; on another channel it does not.
    "other-track-same-channel": (MidiSpec([track(n(0, 1, C), n(0, 1, E, channel=1)), track(down(0), up(6))]),
                                 SUSTAINED, [(C, 0, 6, 100), (E, 0, 1, 100)]),
    # ... also when the notes' own track has controller events of its own (a volume setting).
    "other-track-with-controls": (MidiSpec([track(cc(0, 7, 100), n(0, 1, C)), track(down(0), up(6))]), SUSTAINED,
                                  [(C, 0, 6, 100)]),
    "other-channel": (MidiSpec([track(n(0, 1, C)), track(down(0, channel=3), up(6, channel=3))]), SUSTAINED,
                      [(C, 0, 1, 100)]),
    # Two channels in one track, each with its own pedal.
    "two-channels": (MidiSpec([track(n(0, 2, C, channel=0), n(0, 2, E, channel=1), down(1, channel=1),
                                     up(5, channel=1), down(1, channel=0), up(3, channel=0))]), SUSTAINED,
                     [(C, 0, 3, 100), (E, 0, 5, 100)]),
    # A pedal never lifted holds its notes to the end of the piece: the file's last note-off.
    "never-lifted": (MidiSpec([track(down(0), n(0, 1, C), n(2, 10, E))]), SUSTAINED,
                     [(C, 0, 10, 100), (E, 2, 10, 100)]),
    # Half-pedal values: at or above 64 is down (100 then 64: still down), 63 is up.
    "half-pedal": (MidiSpec([track(down(0, value=100), n(0, 1, C), down(2, value=64), n(3, 4, E), up(5, value=63),
                                   n(6, 7, G), down(7, value=80), up(9, value=10))]), SUSTAINED,
                   [(C, 0, 5, 100), (E, 3, 5, 100), (G, 6, 9, 100)]),
    # Sostenuto holds the keys down when it is pressed (C, and E released at the press), not those struck at the
    # press (F: pedal events act first) or after (G),
    # which the sustain pedal holds; sustain acts on what sostenuto left: lifted before C and E end, it holds nothing
    # more, but E2 (released under sostenuto's hold of another key) is held by a later sustain press until it lifts.
    "sostenuto": (MidiSpec([track(n(0, 2, C), n(1, 2, E), cc(2 * Q, SOSTENUTO, 127), n(2, 3, 65), n(3, 4, G),
                                  down(4), up(5),
                                  cc(6 * Q, SOSTENUTO, 0), n(6, 7, E + 12), down(7), up(9))]), BOTH,
                  [(C, 0, 6, 100), (E, 1, 6, 100), (65, 2, 3, 100), (G, 3, 5, 100), (E + 12, 6, 9, 100)]),
    "sostenuto-then-sustain": (MidiSpec([track(n(0, 2, C), cc(1 * Q, SOSTENUTO, 127), down(5), cc(6 * Q, SOSTENUTO, 0),
                                               up(8))]), BOTH, [(C, 0, 8, 100)]),
    "sostenuto-off": (MidiSpec([track(n(0, 2, C), cc(1 * Q, SOSTENUTO, 127), cc(6 * Q, SOSTENUTO, 0))]), SUSTAINED,
                      [(C, 0, 2, 100)]),
    # A type-0 file (one track, everything merged) holds its pedal like a type-1 file.
    "type-0": (MidiSpec([track(down(0), n(0, 1, C)), track(up(4))], midi_type=0), SUSTAINED, [(C, 0, 4, 100)]),
}


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_pedal_cases(tmp_path, name, parser):
    spec, cfg, expected = CASES[name]
    got = read_midi(write_spec(spec, tmp_path / f"{name}.mid"), cfg, parser)
    assert got.tolist() == sorted(expected, key=lambda r: (r[1], r[0]))


@pytest.mark.parametrize("parser", PARSERS)
def test_running_status_pedal(tmp_path, parser):
    """Controller events sent with running status (status byte B0 once, then value pairs), as many sequencers and
    performance recorders write them, are read as pedal events."""
    on, off = bytes([0x90, C, 100]), bytes([0x80, C, 0])
    events = [(0, bytes([0xB0, 7, 100])), (0, bytes([SUSTAIN, 127])), (0, on), (Q, off), (4 * Q, bytes([0xB0, 7, 90])),
              (0, bytes([SUSTAIN, 0]))]
    path = tmp_path / "running.mid"
    path.write_bytes(raw_midi([events]))
    assert read_midi(path, SUSTAINED, parser).tolist() == [(C, 0, 5, 100)]


def test_scan_matches_mido(tmp_path):
    """The raw walk finds the same controller events as mido, on random files with notes, pedals, meta events and
    several tracks and channels."""
    rng = np.random.default_rng(7)
    for i in range(20):
        spec = random_spec(rng)
        for t in spec.tracks:
            for _ in range(int(rng.integers(0, 12))):
                t.append(cc(int(rng.integers(0, 40 * Q)), int(rng.choice([SUSTAIN, SOSTENUTO, 7])),
                            int(rng.integers(0, 128)), int(rng.integers(0, 3))))
            t.sort(key=lambda e: e[0])
        path = write_spec(spec, tmp_path / f"r{i}.mid")
        data = path.read_bytes()
        got = scan(data, _check_chunks(path, data), (SUSTAIN, SOSTENUTO), with_notes=False).cc.tolist()
        want = []
        for mt in mido.MidiFile(str(path)).tracks:
            tick = 0
            for msg in mt:
                tick += msg.time
                if msg.type == "control_change" and msg.control in (SUSTAIN, SOSTENUTO):
                    want.append([tick, msg.channel, msg.control, msg.value])
        assert got == want


def test_meta_and_sysex_skipped(tmp_path):
    """A long meta text and a sysex between pedal events are walked over by their lengths."""
    text = b"x" * 200
    events = [(0, b"\xff\x01" + vlq(len(text)) + text), (0, bytes([0xB0, SUSTAIN, 127])), (0, bytes([0x90, C, 100])),
              (Q, b"\xf0\x03\x7e\x09\xf7"), (0, bytes([0x80, C, 0])), (2 * Q, bytes([0xB0, SUSTAIN, 0]))]
    path = tmp_path / "meta.mid"
    path.write_bytes(raw_midi([events]))
    for parser in PARSERS:
        assert read_midi(path, SUSTAINED, parser).tolist() == [(C, 0, 3, 100)]


def test_preprocess_applies_the_sustain_pedal_by_default(tmp_path):
    """Shards hold the pedalled notes unless --no-sustain; the manifest's representation says which, so do
    checkpoints; a rerun into a folder made the other way (or before pedals were read) is refused."""
    from test_preprocess import read_shards

    from deepj.data.manifest import Manifest
    from deepj.preprocess import main

    src = tmp_path / "midi" / "romantic" / "chopin"
    src.mkdir(parents=True)
    write_spec(MidiSpec([track(down(0), *[n(2 * i, 2 * i + 1, C + i) for i in range(20)], up(48))]),
               src / "etude.mid")
    runs = {}
    for name, flags in (("pedal", []), ("dry", ["--no-sustain"]), ("both", ["--sostenuto"])):
        out = tmp_path / name
        assert main([str(tmp_path / "midi"), str(out), "--workers", "1", *flags]) == 0
        runs[name] = Manifest.load(out)
        (notes,) = [nt for _, nt in read_shards(out, "train")]
        assert notes["end"].tolist() == ([48] * 20 if name != "dry" else [2 * i + 1 for i in range(20)])
    assert runs["pedal"].representation == ReprConfig(sustain=True)
    assert runs["dry"].representation == ReprConfig()
    assert runs["both"].representation == ReprConfig(sustain=True, sostenuto=True)
    assert len({m.hash for m in runs.values()}) == 3  # three corpora for checkpoints

    assert main([str(tmp_path / "midi"), str(tmp_path / "dry"), "--workers", "1"]) == 2  # made with --no-sustain
    # A folder from before pedals were read (no sustain setting in its manifest) read without them: not the default.
    raw = json.loads((tmp_path / "dry" / "manifest.json").read_text())
    del raw["settings"]["sustain"], raw["settings"]["sostenuto"]
    (tmp_path / "dry" / "manifest.json").write_text(json.dumps(raw))
    assert Manifest.load(tmp_path / "dry").hash == runs["dry"].hash
    assert main([str(tmp_path / "midi"), str(tmp_path / "dry"), "--workers", "1", "--no-sustain"]) == 0
    assert main([str(tmp_path / "midi"), str(tmp_path / "dry"), "--workers", "1"]) == 2


def test_checkpoint_meta_keeps_the_pedals(tmp_path):
    from deepj.model import ModelConfig
    from deepj.music.styles import StyleTree
    from deepj.training.checkpoint import CheckpointMeta

    meta = CheckpointMeta(step=3, world_size=1, kind="train", backend="ddp", model=ModelConfig(),
                          styles=StyleTree.from_leaves(["a/b"]), representation=BOTH, manifest_hash="x", config={})
    assert CheckpointMeta.from_json(json.loads(json.dumps(meta.to_json())), tmp_path).representation == BOTH
    old = meta.to_json()
    old["representation"] = {"min_pitch": 36, "max_pitch": 84}  # written before pedals were read
    assert CheckpointMeta.from_json(old, tmp_path).representation == ReprConfig()


def test_parsers_agree_on_random_pedalled_files(tmp_path):
    """symusic's reading (its own controller lists where one track and channel holds the notes, else the walk) and
    pretty_midi's (always the walk) give the same notes on random files: notes and pedals on several tracks and
    channels, one-track files, pedals at the ticks notes end."""
    rng = np.random.default_rng(11)
    for i in range(60):
        spec = random_spec(rng)
        if i % 2:  # half of them one track on one channel, the layout of performance MIDI (the first track's
            # notes of one channel: merging more would overlap notes of a pitch, which the parsers pair differently)
            first = spec.tracks[0]
            spec.tracks = [[(*e[:4], 0) for e in first if e[4] == first[0][4]]]
        for t in spec.tracks:
            ends = [e[0] for e in t if e[1] == "off"]
            for _ in range(int(rng.integers(0, 10))):
                tick = int(rng.choice(ends)) if ends and rng.random() < 0.3 else int(rng.integers(0, 40 * Q))
                t.append(cc(tick, int(rng.choice([SUSTAIN, SUSTAIN, SOSTENUTO])), int(rng.integers(0, 128)),
                            int(rng.integers(0, 2)) if i % 2 == 0 else 0))
            t.sort(key=lambda e: e[0])
        path = write_spec(spec, tmp_path / f"r{i}.mid")
        a, b = (read_midi(path, BOTH, p) for p in PARSERS)
        assert a.tolist() == b.tolist(), i


def test_one_track_files_do_not_walk_the_events(tmp_path, monkeypatch):
    """A performance file (all events in one track, one channel, as MAESTRO's) takes its pedal from symusic's
    controller list; the walk (6 times the reading time of a MAESTRO file) is left for the files that need it."""
    import deepj.music.pedal as pedal

    path = write_spec(MidiSpec([[], track(down(0), n(0, 1, C), up(4))]), tmp_path / "perf.mid")
    monkeypatch.setattr(pedal, "scan", lambda *a, **k: pytest.fail("walked"))
    assert read_midi(path, SUSTAINED, "symusic").tolist() == [(C, 0, 4, 100)]
    with pytest.raises(pytest.fail.Exception, match="walked"):  # pretty_midi, the reference, always walks
        read_midi(path, SUSTAINED, "pretty_midi")
