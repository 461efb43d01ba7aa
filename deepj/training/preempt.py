"""Preemption: SIGTERM and SIGUSR2 only set a flag; the loop all-reduces it so every rank stops at the same step.

Nothing else happens in the handler (docs/design.md, distributed pitfall 11): saving from a signal handler races the
training step, and a signal that reaches one rank only would make that rank save alone. Slurm sends USR2
(`#SBATCH --signal=B:USR2@180`, forwarded by slurm/train.sbatch); torchrun forwards TERM to its workers. After the
coordinated checkpoint the trainer exits with PREEMPTED_EXIT, which slurm/train.sbatch and tests read as "requeue me".
"""

from __future__ import annotations

import signal

from deepj.training import dist

PREEMPTED_EXIT = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, run me again
SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class StopFlag:
    def __init__(self) -> None:
        self.local = False
        self.signal_name = ""
        for sig in SIGNALS:
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        self.local = True
        self.signal_name = signal.Signals(signum).name

    def agreed(self) -> bool:
        """True on every rank as soon as any rank has seen a signal (a collective: call it on all ranks together)."""
        return dist.all_reduce_max(1.0 if self.local else 0.0) > 0
