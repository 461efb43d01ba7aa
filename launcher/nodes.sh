# Sourced by torchrun.sh and deepspeed.sh: how many nodes, processes per node and which Python.
# nnodes: DEEPJ_NNODES, else SLURM_NNODES, else 1. nproc: DEEPJ_NPROC_PER_NODE, else SLURM_GPUS_ON_NODE, else the GPUs
# nvidia-smi lists, else 1. py: DEEPJ_PYTHON, else python3.
nnodes=${DEEPJ_NNODES:-${SLURM_NNODES:-1}}
nproc=${DEEPJ_NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}
if [ -z "$nproc" ]; then
  nproc=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
  [ "$nproc" -ge 1 ] 2>/dev/null || nproc=1
fi
py=${DEEPJ_PYTHON:-python3}
