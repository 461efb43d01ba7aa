"""deepj: train DeepJ (Mao, Shin & Cottrell, ICSC 2018) on large MIDI corpora and generate music in a style."""

__version__ = "0.1.0"
