"""Preemption: SIGTERM, SIGUSR2, SIGINT and SIGHUP only set a flag; the loop all-reduces it so every rank stops at the
same step.

Nothing else happens in the handler (docs/design.md, distributed pitfall 11): saving from a signal handler races the
training step, and a signal that reaches one rank only would make that rank save alone. Slurm sends USR2
(`#SBATCH --signal=B:USR2@180`, forwarded by slurm/train.sbatch); torchrun forwards TERM, INT, HUP and QUIT to its
workers. After the coordinated checkpoint the trainer exits with PREEMPTED_EXIT, which slurm/train.sbatch and tests
read as "requeue me".

Ctrl-C (SIGINT) is a stop like SIGTERM; a second one aborts at once (KeyboardInterrupt, nothing saved). SIGHUP (the
terminal or ssh session went away; torchrun forwards it too) is a stop as well, instead of a death without a save.
SIGINT and SIGHUP that the process inherited as ignored stay ignored: nohup and the background jobs of scripts ignore
them on purpose. A rank whose launcher died (torchrun SIGKILLed, or killed by a USR2 it did not ignore: its workers are
re-parented and nobody would ever forward a signal again) stops the same way: `poll_parent` compares the parent's pid
with the one at start, once per step.
"""

from __future__ import annotations

import os
import signal

from deepj.training import dist

PREEMPTED_EXIT = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, run me again
SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP)
# Left ignored when inherited ignored. Not USR2: launcher/torchrun.sh makes torchrun ignore it, its workers inherit that
# across exec, and they must handle it.
KEEP_IGNORED = (signal.SIGINT, signal.SIGHUP)


def launcher_pid() -> int | None:
    """The parent's pid when it is a launcher: torchrun and the deepspeed launcher set LOCAL_RANK in the processes
    they start. Only then does the parent's death mean the job is gone; a plain `python -m deepj.train` under nohup
    must outlive its shell. Read it at start: once the launcher is gone the parent is someone else."""
    return os.getppid() if "LOCAL_RANK" in os.environ else None


class StopFlag:
    def __init__(self, parent: int | None = None) -> None:
        """`parent`: a launcher's pid to watch (`launcher_pid()` at start), or None."""
        self.local = False  # this rank saw a stop request
        self.requested = False  # every rank knows that some rank saw one (set from a collective only)
        self.signal_name = ""
        self._parent = parent
        self._previous = {}  # the handlers replaced here, for restore()
        for sig in SIGNALS:
            if sig in KEEP_IGNORED and signal.getsignal(sig) is signal.SIG_IGN:
                continue
            self._previous[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        """Put back the handlers this flag replaced (a run inside a longer-lived process, such as a test)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            # The second Ctrl-C gets Python's own handler: KeyboardInterrupt, wherever the main thread is.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            # os.write, not print: print from a handler can re-enter a print the main thread is in the middle of.
            os.write(2, b"SIGINT: saving at the next step, then exiting 75; Ctrl-C again to abort without saving\n")
        self.local = True
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def poll_parent(self) -> None:
        """A changed parent pid means the launcher is gone (re-parented to init or a subreaper): stop like SIGTERM."""
        if self._parent is not None and not self.local and os.getppid() != self._parent:
            self.local = True
            self.signal_name = f"launcher pid {self._parent} is gone"

    def agree(self, *flags: float) -> list[float]:
        """Collective (all ranks together): the stop flag and any `flags` maxed over ranks in one all-reduce.
        Returns the maxed flags; sets `requested` when any rank has seen a stop."""
        self.poll_parent()
        stop, *rest = dist.all_reduce_max_list([1.0 if self.local else 0.0, *flags])
        if stop > 0:
            self.requested = True
        return rest

    def agreed(self) -> bool:
        """True on every rank as soon as any rank has seen a signal (a collective: call it on all ranks together)."""
        self.agree()
        return self.requested
