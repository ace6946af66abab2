"""`charlstm` as run by tests/test_distributed.py, under mpiexec or alone, with one fault put in:

    python tests/mpi_worker.py FAULT STEP [charlstm arguments...]

FAULT is `none`; `raise` (rank 1 raises inside step STEP); `kill` (rank 1 dies of SIGKILL
inside step STEP); `corrupt` (rank 1 nudges one weight by one ulp after step STEP, as a silent
memory error would); `signal` (rank 0 sends itself SIGUSR1 after step STEP: a clean stop
requested at a known step); or `signal-rank-1` (the same on rank 1 only).
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from charlstm import distributed
from charlstm import train as training


def main() -> None:
    fault, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    rank = distributed.launched_rank() or 0
    original = training._Run._step

    def step(self: training._Run, *args: object, **kwargs: object) -> bool:
        if rank == 1 and self.p.step + 1 == at:
            if fault == "raise":
                raise RuntimeError("a fault put in by the test")
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
        stop = original(self, *args, **kwargs)
        if self.p.step == at:
            if fault == "corrupt" and rank == 1:
                self.params.flat[0] = np.nextafter(self.params.flat[0], np.float32(np.inf))
            if (fault, rank) in (("signal", 0), ("signal-rank-1", 1)):
                os.kill(os.getpid(), signal.SIGUSR1)
        return stop

    training._Run._step = step
    sys.argv = ["charlstm", *argv]
    from charlstm.cli import main as charlstm

    charlstm()


if __name__ == "__main__":
    main()
