"""Communication between the processes of a data-parallel run, behind one small interface.

`connect()` gives `Alone` (one process; mpi4py is never imported) unless the process was
started by `mpiexec` / `srun` with more than one rank, then `Group` over mpi4py. The training
loop calls the same methods either way. Every sum is taken in rank order, so that every rank
holds the same bits and a run repeats bitwise for the same number of ranks (MPI's Allreduce
promises neither).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from .errors import CharLSTMError, ConfigError

# What the launchers set in every rank's environment: MPICH's Hydra (and Slurm's PMI-2) and
# Open MPI. Without one of them the process is alone and does not touch MPI.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")
MPI_EXTRA = 'pip install "charlstm[mpi]"'

Result = TypeVar("Result")


class GroupError(CharLSTMError):
    """An error every rank raised at the same point (a bad option, a divergence seen in the
    summed gradient, parameters that differ between ranks): rank 0 reports it, the others exit
    quietly, and no rank needs to abort the job."""

    every_rank = True


def _launcher_number(names: Sequence[str], environ: Mapping[str, str]) -> int | None:
    for name in names:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def launched_size(environ: Mapping[str, str] = os.environ) -> int | None:
    """The number of ranks the launcher started, or None when not started by one."""
    return _launcher_number(SIZE_VARIABLES, environ)


def launched_rank(environ: Mapping[str, str] = os.environ) -> int | None:
    """This process's rank as the launcher set it, or None when not started by one."""
    return _launcher_number(RANK_VARIABLES, environ)


def connect() -> Alone | Group:
    """The group this process trains in: Alone, or the MPI world when launched with 2+ ranks."""
    size = launched_size()
    if size is None or size == 1:
        return Alone()
    try:
        from mpi4py import MPI
    except ImportError:
        raise ConfigError(
            f"started by mpiexec as one of {size} processes, but mpi4py is not installed ({MPI_EXTRA})"
        ) from None
    world = MPI.COMM_WORLD
    if world.Get_size() != size:  # mpi4py built for another MPI than the mpiexec that started us
        raise ConfigError(
            f"mpiexec started {size} processes but MPI sees {world.Get_size()}: mpi4py belongs to "
            "another MPI than this mpiexec (use the mpiexec installed with it, e.g. the venv's)"
        )
    return Group(world, MPI)


def checksum(arrays: Sequence[np.ndarray]) -> int:
    """CRC-32 of the arrays' bytes: equal on two ranks only if every bit is."""
    crc = 0
    for arr in arrays:
        crc = zlib.crc32(np.ascontiguousarray(arr).view(np.uint8), crc)
    return crc


class Alone:
    """One process: every collective is the identity."""

    rank = 0
    size = 1
    is_root = True

    def streams(self, batch: int) -> slice:
        """The streams of the B this rank trains: all of them."""
        return slice(0, batch)

    def gradient_buffer(self, n: int) -> np.ndarray:
        """A float32 buffer (n,) for the summed gradient."""
        return np.zeros(n, dtype=np.float32)

    def exchange(self, gradient: np.ndarray, scalars: np.ndarray) -> np.ndarray:
        """Sum `gradient` (a gradient_buffer) over ranks in place, and `scalars` (S,) float64;
        returns the summed scalars."""
        return scalars.copy()

    def broadcast(self, arr: np.ndarray) -> None:
        """Overwrite arr on every rank with rank 0's."""

    def gather_streams(self, parts: np.ndarray) -> np.ndarray | None:
        """(L, B/K, H) on each rank -> (L, B, H) in stream order on rank 0, None elsewhere."""
        return parts

    def all_values(self, value: Any) -> list[Any]:
        """Every rank's value, in rank order, on every rank."""
        return [value]

    def sum(self, values: Sequence[float]) -> list[float]:
        """The element-wise sum over ranks, added in rank order."""
        return [float(v) for v in values]

    def together(self, work: Callable[[], Result], machine_first: bool = False) -> Result:
        """Run `work` on every rank; a CharLSTMError on any of them raises GroupError on all.
        `machine_first`: on the first rank of each machine before the others (one writes the
        corpus cache that the others then read)."""
        return work()

    def threads(self) -> int:
        """Cores this rank may use: all of the process's."""
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def abort(self, code: int) -> None:
        raise SystemExit(code)


class Group(Alone):
    """K processes under MPI (mpi4py). Rank r trains streams [r·B/K, (r+1)·B/K)."""

    def __init__(self, comm: Any, MPI: Any) -> None:
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0
        self.machine = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)  # this machine's ranks
        self._chunk = 0  # C: floats of the gradient each rank sums, the buffer padded to K·C
        self._received: np.ndarray | None = None  # (K, C): every rank's part of my chunk
        self._summed: np.ndarray | None = None  # (C + S32,): my summed chunk, my scalars after it

    def streams(self, batch: int) -> slice:
        if batch % self.size:
            raise GroupError(
                f"--batch-size {batch} does not split over {self.size} processes: "
                f"give a multiple of {self.size}"
            )
        share = batch // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def gradient_buffer(self, n: int) -> np.ndarray:
        K = self.size
        self._chunk = -(-n // K)
        self._padded = np.zeros(K * self._chunk, dtype=np.float32)
        self._received = np.empty((K, self._chunk), dtype=np.float32)
        return self._padded[:n]

    def exchange(self, gradient: np.ndarray, scalars: np.ndarray) -> np.ndarray:
        """A reduce-scatter as all-to-all then a sum in rank order, then an all-gather, which
        also carries each rank's own float64 scalars (S,) beside its chunk."""
        MPI, K, C = self.MPI, self.size, self._chunk
        assert self._received is not None and gradient.base is self._padded
        S32 = 2 * scalars.size  # each float64 as two float32 slots
        if self._summed is None or self._summed.size != C + S32:
            self._summed = np.empty(C + S32, dtype=np.float32)
            self._gathered = np.empty((K, C + S32), dtype=np.float32)
        send = self._padded.reshape(K, C)
        self.comm.Alltoall([send, MPI.FLOAT], [self._received, MPI.FLOAT])
        mine = self._summed[:C]
        mine[:] = self._received[0]
        for part in self._received[1:]:  # rank order: the same bits on every rank
            mine += part
        self._summed[C:].view(np.float64)[:] = scalars
        self.comm.Allgather([self._summed, MPI.FLOAT], [self._gathered, MPI.FLOAT])
        send[...] = self._gathered[:, :C]
        total = np.zeros_like(scalars)
        for row in self._gathered:
            total += row[C:].view(np.float64)
        return total

    def broadcast(self, arr: np.ndarray) -> None:
        self.comm.Bcast(arr, root=0)

    def gather_streams(self, parts: np.ndarray) -> np.ndarray | None:
        pieces = self.comm.gather(np.ascontiguousarray(parts), root=0)
        return None if pieces is None else np.concatenate(pieces, axis=1)

    def all_values(self, value: Any) -> list[Any]:
        return self.comm.allgather(value)

    def sum(self, values: Sequence[float]) -> list[float]:
        total = [0.0] * len(values)
        for row in self.comm.allgather([float(v) for v in values]):
            total = [t + v for t, v in zip(total, row, strict=True)]
        return total

    def together(self, work: Callable[[], Result], machine_first: bool = False) -> Result:
        if not machine_first:
            return self._together(work)
        first = self.machine.Get_rank() == 0
        result = self._together(work if first else lambda: None)
        later = self._together(lambda: None if first else work())
        return result if first else later

    def _together(self, work: Callable[[], Result]) -> Result:
        result: Any = None
        error: str | None = None
        try:
            result = work()
        except GroupError:
            raise
        except CharLSTMError as exc:
            error = str(exc)
        errors = self.comm.allgather(error)
        for rank, message in enumerate(errors):
            if message is not None:
                raise GroupError(message if rank == 0 else f"rank {rank}: {message}")
        return result

    def threads(self) -> int:
        """The cores of this machine (the union of its ranks' CPU sets) over its ranks."""
        cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
        union = set().union(*self.machine.allgather(cpus)) or set(range(os.cpu_count() or 1))
        return max(1, len(union) // self.machine.Get_size())

    def abort(self, code: int) -> None:
        self.comm.Abort(code)
