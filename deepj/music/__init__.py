"""The music itself, before any model or data pipeline: MIDI files in, grid notes and piano rolls out, and back.

A MIDI file is read into canonical grid notes `(pitch, start, end, velocity)` on a 16th-note grid (all tracks merged);
a piece's grid notes become the `(T, N, 3)` `[play, replay, volume]` piano roll the model sees, and a generated roll
becomes grid notes, a MIDI file, a picture and audio again. Style names become the style vectors the model is
conditioned on (docs/design.md#the-representation).

- `constants.py`: musical facts of the representation (grid, channels, pitch ranges);
- `representation.py`: `ReprConfig`; tick notes -> grid notes <-> piano roll, and the rules that pin them;
- `midi_io.py`: reading MIDI files into grid notes (pretty_midi and symusic), writing grid notes back;
- `styles.py`: `StyleTree`, the corpus's style tree, and style names or blends -> style vectors;
- `render.py`: piano-roll pictures and audio through FluidSynth.
"""
