"""Low-level helpers for the numba kernels: CPU operations numba does not offer, as
intrinsics (an atomic acquire load for spin waits, the spin-loop hint ``pause``, giving up
the core, cache-line prefetches for reading and for writing, a call to another kernel's own
machine code), a spin wait, and the element copy loop the kernels share.

Each intrinsic emits one LLVM instruction or call; nothing here holds state.
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.registry import CPUDispatcher
from numba.extending import intrinsic


def _item_pointer(context, builder, array_type, array_value, indices):
    array = context.make_array(array_type)(context, builder, array_value)
    return cgutils.get_item_pointer(context, builder, array_type, array, indices)


@intrinsic
def load_acquire(typingctx, array, index):
    """``array[index]`` (1-D int64) as an atomic acquire load: re-read from memory on every
    call, where a plain load could be hoisted out of a spin loop by LLVM."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64 and array.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        pointer = _item_pointer(context, builder, signature.args[0], args[0], [args[1]])
        return builder.load_atomic(pointer, "acquire", 8)
    return types.int64(array, index), codegen


@intrinsic
def store_release(typingctx, array, index, value):
    """``array[index] = value`` (1-D int64) as an atomic release store: every write before it
    is visible to a thread that reads the new value with ``load_acquire``."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64 and array.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        pointer = _item_pointer(context, builder, signature.args[0], args[0], [args[1]])
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(value, pointer, "release", 8)
        return context.get_dummy_value()
    return types.void(array, index, value), codegen


@intrinsic
def cpu_relax(typingctx):
    """x86 ``pause``: the spin-loop hint (saves power, avoids a memory-order flush on exit)."""
    def codegen(context, builder, signature, args):
        pause = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                               "llvm.x86.sse2.pause")
        builder.call(pause, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def yield_cpu(typingctx):
    """``sched_yield()``: let another runnable thread have this core (libc; resolved by name
    when the kernel is loaded, so ``cache=True`` works)."""
    def codegen(context, builder, signature, args):
        sched_yield = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        builder.call(sched_yield, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def sleep_us(typingctx, microseconds):
    """``usleep(microseconds)`` (libc): give the core up for a while."""
    def codegen(context, builder, signature, args):
        usleep = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), [ir.IntType(32)]), "usleep")
        value = context.cast(builder, args[0], signature.args[0], types.int32)
        builder.call(usleep, [value])
        return context.get_dummy_value()
    return types.void(microseconds), codegen


# Spin waits yield the core after this many ``pause`` turns (~50 us), and sleep in steps of
# SPIN_SLEEP_US after SPIN_YIELDS_BEFORE_SLEEP yields: two threads that wait for each other
# must not burn the time slices the other one needs when other processes take the cores.
SPIN_TURNS_BEFORE_YIELD = 2_000
SPIN_YIELDS_BEFORE_SLEEP = 4
SPIN_SLEEP_US = 20


@njit(inline="always")
def spin_until(counters, index, value, cancel_index, cancel_value):
    """Spin until ``counters[index] >= value`` (True) or, with ``cancel_index`` >= 0, until
    ``counters[cancel_index] >= cancel_value`` first (False); yields the core now and then,
    and sleeps between checks once the wait has been long."""
    turns = 0
    yields = 0
    while load_acquire(counters, index) < value:
        if cancel_index >= 0 and load_acquire(counters, cancel_index) >= cancel_value:
            return False
        if yields >= SPIN_YIELDS_BEFORE_SLEEP:
            sleep_us(SPIN_SLEEP_US)
            continue
        turns += 1
        if turns == SPIN_TURNS_BEFORE_YIELD:
            yield_cpu()
            yields += 1
            turns = 0
        else:
            cpu_relax()
    return True


def _prefetch(builder, pointer, write):
    int32 = ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [ir.PointerType(), int32, int32, int32]),
        "llvm.prefetch.p0")
    # rw = 1 (write) or 0 (read), locality = 3 (keep in all cache levels), data cache
    builder.call(fn, [pointer, int32(1 if write else 0), int32(3), int32(1)])


@intrinsic
def prefetch_for_write(typingctx, array, row, column):
    """Start loading the cache line of ``array[row, column]`` (2-D) for a coming write
    (``prefetchw``); no effect on results. For rows of a large array written in an order the
    hardware prefetchers do not follow."""
    if not (isinstance(array, types.Array) and array.ndim == 2):
        return None

    def codegen(context, builder, signature, args):
        _prefetch(builder, _item_pointer(context, builder, signature.args[0], args[0],
                                         [args[1], args[2]]), write=True)
        return context.get_dummy_value()
    return types.void(array, row, column), codegen


@intrinsic
def prefetch_for_read(typingctx, array, index):
    """Start loading the cache line of ``array[index]`` (1-D) for a coming read; no effect on
    results. For loads at addresses computed late (e.g. from a hash) in a long loop body."""
    if not (isinstance(array, types.Array) and array.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        _prefetch(builder, _item_pointer(context, builder, signature.args[0], args[0], [args[1]]),
                  write=False)
        return context.get_dummy_value()
    return types.void(array, index), codegen


def kernel_address(kernel: CPUDispatcher, *arg_types) -> int:
    """Address of ``kernel``'s machine code for ``arg_types`` (numba types), compiling it (or
    loading it from the cache) first: the argument of ``call_kernel``."""
    cres = kernel.get_compile_result(types.none(*arg_types))
    return cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)


@intrinsic
def call_kernel(typingctx, address, a, b):
    """Call the compiled kernel at ``address`` (``kernel_address``) on two array arguments,
    ignoring its result. numba would otherwise link a copy of the kernel into the caller and
    optimize it there, and LLVM compiles fastmath code differently in a different module
    (results moved by 1 ulp); through its address the caller runs the very machine code that
    a call from Python runs. The kernel must not raise."""
    if not (isinstance(address, types.Integer) and isinstance(a, types.Array)
            and isinstance(b, types.Array)):
        return None

    def codegen(context, builder, signature, args):
        arg_types = [signature.args[1], signature.args[2]]
        fnty = context.call_conv.get_function_type(types.none, arg_types)
        function = builder.inttoptr(args[0], fnty.as_pointer())
        context.call_conv.call_function(builder, function, types.none, arg_types, args[1:])
        return context.get_dummy_value()
    return types.void(address, a, b), codegen


@njit(inline="always")
def copy_into(dst, src):
    """``dst[:] = src`` for 1-D views of equal length that do not overlap, as a plain loop
    that LLVM vectorizes (numba's slice assignment checks for overlap and goes through a
    general indexing path)."""
    for k in range(dst.shape[0]):
        dst[k] = src[k]
