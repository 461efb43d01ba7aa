"""How good a trained model's music is: generated and real piano rolls in, scores, figures and a listening page out.

`deepj.fidelity` generates pieces per style and asks how often a classifier trained on real windows recognises the
style they were asked for, and how far their music statistics are from real music's. The modules here do the measuring
and the reporting.

- `classifier.py`: musical features of a window, the style classifier over them, and the accuracy bookkeeping;
- `musicstats.py`: MGEval-style statistics per piece and per set, and how well two sets overlap;
- `listening.py`: the listening page (rolls, audio, the classifier's verdicts, confusion matrices, the blend curve).
"""
