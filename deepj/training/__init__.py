"""Training DeepJ across processes and nodes: a config and a corpus's shards in, checkpoints and logs out.

`deepj.train` builds everything here from one resolved config: the loss, the optimizer and its schedule, an engine
that hides the data-parallel backend (DDP or DeepSpeed), and the checkpoints, preemption handling and logging that let
a run be killed or preempted and resume exactly (docs/design.md, "Distributed training" and
docs/design.md#checkpoints-and-preemption).

- `config.py`: `TrainConfig`, one small dataclass per component;
- `dist.py`: who this process is in a distributed run (torchrun or Slurm), and the few collectives the trainer needs;
- `engine.py`: the `Engine` protocol, its DDP implementation, precision and the LSTM compute-dtype probe;
- `engine_deepspeed.py`: DeepSpeed behind the same `Engine` protocol, with its collective checkpoint;
- `loss.py`: DeepJ's loss, and the play-only likelihood of the BL2012 benchmarks;
- `optim.py`: `OptimConfig`, Nadam or AdamW, and the learning-rate schedule;
- `checkpoint.py`: atomic checkpoints, verified on load, `CheckpointMeta` and `load_model`;
- `resume.py`: a training run's checkpoints: what it saves, which one it resumes from, whether it can, loading it;
- `preempt.py`: `StopFlag`, SIGTERM/SIGUSR2/SIGINT/SIGHUP or a launcher gone turned into a stop agreed by every rank;
- `logger.py`: the loss meter and throughput, TensorBoard scalars, the console line per log step, FLOPs;
- `samples.py`: generated pieces in TensorBoard during training, as pictures and audio.
"""
