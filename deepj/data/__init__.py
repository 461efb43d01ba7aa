"""The corpus on disk and the windows training reads from it: grid notes of pieces in, batches of windows out.

Preprocessing hands over each piece's grid notes and style; they are written as WebDataset tar shards described by a
`manifest.json`. Training, evaluation and the benchmarks read the manifest once and stream windows of piano roll cut
from the shards on the fly, in an order that is a function of (seed, epoch) only, so every rank gets equal batches
and a run resumes exactly, at any world size (docs/design.md, distributed pitfalls 1-6).

- `manifest.py`: `Manifest`, the interface between preprocessing and every reader of shards, loaded and validated once;
- `shards.py`: the shard format (compact grid notes per piece) and `SplitWriter`, which writes a split's shards;
- `windows.py`: windows cut on the fly: the catalogue, the epoch order, reading and cutting;
- `loader.py`: `DataConfig`, `StreamingLoader`, validation batches.
"""
