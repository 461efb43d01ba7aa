"""Musical facts of the representation. Hyperparameters and paths live in config, not here."""

STEPS_PER_BEAT = 4  # 16th-note grid: a beat (quarter note) is 4 steps
BEATS_PER_BAR = 4
STEPS_PER_BAR = STEPS_PER_BEAT * BEATS_PER_BAR  # 16; the beat input is one-hot of (step mod 16)

PITCH_CLASSES = 12
MIDI_PITCHES = 128
MAX_VELOCITY = 127
DRUM_CHANNEL = 9  # General MIDI channel 10, zero-based

DEFAULT_MIN_PITCH = 36  # C2, inclusive (the paper's range)
DEFAULT_MAX_PITCH = 84  # C6, exclusive: 48 notes, C2..B5
PIANO_MIN_PITCH = 21  # A0, inclusive (full piano, BL2012)
PIANO_MAX_PITCH = 109  # C8 inclusive -> 109 exclusive: 88 keys

# Channels of a piano roll (..., 3)
PLAY, REPLAY, VOLUME = 0, 1, 2
NUM_CHANNELS = 3
