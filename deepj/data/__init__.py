"""The corpus on disk and the windows training reads from it: grid notes of pieces in, batches of windows out.

Preprocessing hands over each piece's grid notes and style; they are written as WebDataset tar shards described by a
`manifest.json` and a piece index `pieces.npy`. Training, evaluation and the benchmarks read the manifest once and
stream windows of piano roll cut from the pieces on the fly, reading each piece by its byte range, with memory bounded
by `data.cache_mb`, in an order that is a function of (seed, epoch) only, so every rank gets equal batches and a run
resumes exactly, at any world size (docs/design.md, distributed pitfalls 1-6).

- `manifest.py`: `Manifest` and `PieceTable`, the interface between preprocessing and every reader of shards, loaded
  and verified once;
- `shards.py`: the shard format (compact grid notes per piece), `ShardWriter` and `SplitWriter`, the output folder;
- `windows.py`: windows cut on the fly: the catalogue, the pooled epoch order, reading pieces, the bounded cache;
- `loader.py`: `DataConfig`, `StreamingLoader`, validation batches;
- `upgrade.py`: a shard folder of manifest format 1 gets its piece index in place.
"""
