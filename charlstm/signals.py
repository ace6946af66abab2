"""What each cell lets the inspector see: its gates (in the order of its gate axis), its state
signals, their short roles and one-line meanings, which gates are sigmoids that can shut or
open wide, and which gate keeps the memory from one step to the next. No numbers here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .model import CELL_GATES


@dataclass(frozen=True)
class CellSignals:
    """The signals of one cell: `gates` along its gate axis (as the kernels and PyTorch order
    them), then `states`; `keep` is the gate whose value is the share of the old state kept per
    step (the LSTM's f, the GRU's z), None when the cell has none."""

    cell: str
    gates: tuple[str, ...]
    states: tuple[str, ...]
    sigmoid: tuple[str, ...]  # gates in (0, 1): the ones that can be shut or wide open
    keep: str | None
    default: str  # the signal a heatmap shows unless asked
    roles: dict[str, str]  # short labels for tables and rows
    help: dict[str, str]  # one line each, for legends

    @property
    def names(self) -> tuple[str, ...]:
        return self.gates + self.states

    @property
    def keep_index(self) -> int:
        """The keep gate's place along the gate axis (-1: none)."""
        return -1 if self.keep is None else self.gates.index(self.keep)

    def check(self, name: str) -> str:
        """`name` if this cell has that signal, else a one-line error naming the ones it has."""
        if name not in self.names:
            raise ConfigError(
                f"unknown signal {name!r} for a {self.cell} model; choose one of {', '.join(self.names)}"
            )
        return name

    def shown_as(self, name: str) -> str:
        """How a signal is drawn: the memory c as tanh(c), everything else as computed."""
        return "tanh(c)" if name == "c" else name


LSTM = CellSignals(
    cell="lstm",
    gates=CELL_GATES["lstm"],
    states=("c", "h"),
    sigmoid=("i", "f", "o"),
    keep="f",
    default="c",
    roles={  # from the explainers' "four small networks" picture
        "i": "input/learn",
        "f": "forget",
        "g": "candidate",
        "o": "output/use",
        "c": "memory",
        "h": "hidden",
    },
    help={
        "i": "input gate: how much of the candidate is written into memory now (learn)",
        "f": "forget gate: how much of the old memory is kept (1 keeps all, 0 wipes it)",
        "g": "candidate: the new value on offer for the memory, in [-1, 1]",
        "o": "output gate: how much of the memory is shown as h (use)",
        "c": "memory cell c = f*c_prev + i*g, shown as tanh(c) in [-1, 1]",
        "h": "hidden state h = o*tanh(c): what the layer above and the prediction see",
    },
)

GRU = CellSignals(
    cell="gru",
    gates=CELL_GATES["gru"],
    states=("h",),
    sigmoid=("r", "z"),
    keep="z",
    default="h",
    roles={"r": "reset", "z": "update/keep", "n": "candidate", "h": "hidden/memory"},
    help={
        "r": "reset: how much of the past the candidate sees (0 hides h_prev from n)",
        "z": "update: keep the old state vs take the new (1 keeps h_prev, 0 takes n)",
        "n": "candidate n = tanh(x*Wx_n + r*(h_prev*Wh_n)): the new state on offer, in [-1, 1]",
        "h": "hidden state h = (1-z)*n + z*h_prev: the GRU's only memory, what the layer above sees",
    },
)

RNN = CellSignals(
    cell="rnn",
    gates=CELL_GATES["rnn"],
    states=("h",),
    sigmoid=(),
    keep=None,
    default="h",
    roles={"h": "hidden/memory"},
    help={"h": "hidden state h = tanh(x*Wx + h_prev*Wh + b): no gate decides what is kept"},
)

BY_CELL = {s.cell: s for s in (LSTM, GRU, RNN)}
NO_KEEP_GATE = "a plain RNN has no gate that keeps memory: nothing to saturate, no half-life"


def signals_of(cell: str) -> CellSignals:
    return BY_CELL[cell]
