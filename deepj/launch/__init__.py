"""Launching deepj.train: `python -m deepj.launch doctor | plan | run | status`.

- `doctor`: what this machine offers (torch, CUDA, cuDNN, NCCL, driver, GPUs, DeepSpeed and its ops, /dev/shm, disk,
  FluidSynth, symusic), each problem with its fix (deepj/launch/doctor.py).
- `plan`: parameters, estimated peak GPU memory per rank, loader memory, shards vs ranks x workers, checkpoint size and
  write time, steps per epoch, and warnings, before anything is submitted (deepj/launch/plan.py).
- `run`: composes (and with `--dry-run` only prints) the torchrun, DeepSpeed or sbatch command for N nodes x G GPUs
  (deepj/launch/compose.py); the per-node wrappers live in launcher/, the batch scripts in slurm/.
- `status RUN_DIR`: exit 0 when the run's newest complete checkpoint is at train.max_steps; what slurm/train.sbatch
  asks before it requeues a stopped job (deepj/launch/status.py).
"""
