"""Meeting points for numba's threads inside one parallel region: atomic counters and the
spin loops built on them. numba offers no barrier, and ending the parallel region at every
time step of a recurrence (to start a new one) costs more than the step.

A kernel zeroes a `meeting` counter pair (2,) int64, opens `prange(team)` and calls
`join_team` once per member, `share` for the members whose work that thread does, then,
if together, `meet` after each step of shared work:
  meeting[0] counts the members that joined; meeting[1] the arrivals at meeting points.
Whether the members of a prange really run at once is up to the threading layer (fewer threads
than members, or a busy work-stealing pool, run them one after another). So `join_team` waits a
bounded time for the whole team; a member that gives up claims all of the work for itself and
the others, on seeing the claim, do nothing. The kernel then does the same work alone, in the
same order, so the results do not depend on which way it went.
"""

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

PATIENCE = 1 << 20  # spins (about 20-100 ms) a member waits for its team before working alone
_CLAIMED = -(1 << 40)  # meeting[0] once a member has claimed all the work
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _slot(context, builder, array_type, array, index):
    """Pointer to array[index] in generated code."""
    view = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, view, [index])


@intrinsic
def atomic_add(typingctx, counters, index, value):
    """counters[index] += value atomically (sequentially consistent); returns the old value."""

    def codegen(context, builder, signature, args):
        slot = _slot(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", slot, args[2], "seq_cst")

    return types.int64(counters, index, types.int64), codegen


@intrinsic
def atomic_load(typingctx, counters, index):
    """counters[index], read atomically with acquire ordering: what was written before the
    store it reads is visible after it (and the read is never hoisted out of a loop)."""

    def codegen(context, builder, signature, args):
        slot = _slot(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(slot, "acquire", 8)

    return types.int64(counters, index), codegen


@intrinsic
def atomic_replace(typingctx, counters, index, expected, value):
    """counters[index] = value if it still holds `expected`, atomically; 1 if it did, else 0."""

    def codegen(context, builder, signature, args):
        slot = _slot(context, builder, signature.args[0], args[0], args[1])
        result = builder.cmpxchg(slot, args[2], args[3], "seq_cst", "seq_cst")
        return builder.zext(builder.extract_value(result, 1), ir.IntType(64))

    return types.int64(counters, index, types.int64, types.int64), codegen


@intrinsic
def relax(typingctx):
    """The CPU's spin-wait hint (x86 `pause`; nothing elsewhere): a spinning core yields to
    its sibling hyper-thread and leaves the memory bus alone."""

    def codegen(context, builder, signature, args):
        if _X86:
            pause = ir.FunctionType(ir.VoidType(), [])
            builder.call(cgutils.get_or_insert_function(builder.module, pause, "llvm.x86.sse2.pause"), [])
        return context.get_dummy_value()

    return types.void(), codegen


TOGETHER, ALONE, NOTHING = 1, 0, -1  # what join_team tells a member to do


@njit(cache=True, nogil=True)
def join_team(meeting, team, patience):
    """Join the team of `team` members at meeting (2,) int64 (zeroed beforehand). TOGETHER:
    every member is here, do your share and `meet` after each step. ALONE: the others did not
    come within `patience` spins; do all the work. NOTHING: another member is doing it all."""
    if atomic_add(meeting, 0, 1) < 0:
        return NOTHING
    spins = 0
    while True:
        seen = atomic_load(meeting, 0)
        if seen < 0:
            return NOTHING
        if seen == team:
            return TOGETHER
        spins += 1
        if spins > patience and atomic_replace(meeting, 0, seen, _CLAIMED) == 1:
            return ALONE
        relax()


@njit(cache=True, nogil=True)
def share(how, member, team):
    """(first, last): the members whose work this thread does after join_team said `how`:
    its own when TOGETHER, all of them when ALONE, none when NOTHING. Signed integers on
    every path: prange's index is unsigned, and numba unifies unsigned with signed integers
    as float64, which made every band bound and row index that followed a float."""
    if how == TOGETHER:
        return np.int64(member), np.int64(member) + 1
    if how == ALONE:
        return np.int64(0), np.int64(team)
    return np.int64(0), np.int64(0)


@njit(cache=True, nogil=True)
def meet(meeting, team, step):
    """Wait until every member has finished step `step` (0, 1, 2, ... in every member), so that
    what each wrote during it is visible to all."""
    atomic_add(meeting, 1, 1)
    everyone = team * (step + 1)
    while atomic_load(meeting, 1) < everyone:
        relax()
