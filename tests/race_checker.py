"""Data races in simulated CUDA kernels, found deterministically (for tests/strict_device.py).

Numba's simulator runs one Python thread per CUDA thread and one block after another, so a
kernel that races on a GPU usually gives the right values there: a block's threads
interleave only at the GIL's whim, and a later block always sees an earlier block's
writes. On a GPU both orders are undefined. ``install()`` makes every launch record each
element access, by its address, and raise on the first pair of accesses that a GPU does not
order:

    same block    two threads, at least one writing, with no ``syncthreads()`` between
                  (each thread counts the barriers it passed: accesses of equal counts are
                  concurrent; every thread of a block passes each barrier, which
                  strict_device checks)
    two blocks    any two accesses to one element of global memory, at least one writing
                  (within one launch blocks are unordered; a later launch sees all writes)
    atomics       ``cuda.atomic.*`` on one element do not race with each other, but race
                  with plain reads and writes of other threads

It also raises UninitializedRead on a read of shared memory that no thread of the block
wrote before (a GPU leaves it undefined; the simulator's np.empty often holds zeros).
``cuda.syncwarp()`` orders nothing here (kernels/cuda uses no warp-synchronous code), and
``cuda.local.array`` is not checked.

Shared memory is one table per block, global memory one per launch. Addresses, not array
names, identify elements, so two views or two arguments of one buffer are one memory.
"""
import sys
import threading

import numpy as np

MANY = -1                   # more than one thread (or block) in a record
_lock = threading.Lock()    # the simulator's threads interleave inside a record otherwise
_allocation_lock = threading.Lock()
_launch = None              # the running launch: {"name", "global": {address: record}}


class DataRace(RuntimeError):
    pass


class UninitializedRead(RuntimeError):
    pass


def _thread():
    """The simulator's thread running a kernel now, or None (host code)."""
    thread = threading.current_thread()
    return thread if hasattr(thread, "block_number") else None


def _element_offset(shape, strides, key):
    """The byte offset of ``key``'s element, or None when ``key`` selects several."""
    items = key if type(key) is tuple else (key,)
    if len(items) != len(shape):
        return None
    offset = 0
    for item, extent, stride in zip(items, shape, strides):
        if not isinstance(item, (int, np.integer)) or isinstance(item, (bool, np.bool_)):
            return None
        offset += (item + extent if item < 0 else item) * stride
    return offset


def _describe(block, thread, epoch):
    who = "several threads" if thread == MANY else f"thread {thread}"
    if block == MANY:
        return "threads of several blocks"
    return f"{who} of block {block} after {epoch} syncthreads()"


def _unordered(block, tid, epoch, other_block, other_tid, other_epoch):
    """Whether a GPU leaves an access unordered with an earlier one (see the docstring)."""
    return other_block != block or (other_epoch == epoch and other_tid != tid)


def _element_name(space, ary, key, index):
    within = "" if index is None else f", element {index} of that"
    return f"[{key}] of a {space} {ary.dtype} array of shape {ary.shape}{within}"


def record(space, address, where, write):
    """Record one access of the running kernel's current thread (``where``: the array, the
    key and the index within the key's region, for the message) and raise DataRace when a
    GPU leaves it unordered with an earlier one, UninitializedRead when it reads shared
    memory that no thread of the block wrote.

    A record is [writer block, writer thread, writer epoch, writes all atomic,
                 reader block, reader thread, reader epoch]: the last write and the last
    reads, a thread or block of MANY when several were unordered."""
    thread = _thread()
    if thread is None or _launch is None:
        return
    atomic = thread.in_atomic
    reads = not write                # an atomic read-modify-write reads, then counts as an
    write = write or atomic          # atomic write
    block, tid, epoch = thread.block_number, thread.thread_id, thread.barriers
    table = _launch["global"] if space == "global" else thread.shared_accesses
    with _lock:
        entry = table.get(address)
        if space == "shared" and reads and (entry is None or entry[0] is None):
            raise UninitializedRead(
                f"kernel {_launch['name']}: {_describe(block, tid, epoch)} reads "
                f"{_element_name(space, *where)}, which no thread of the block wrote (shared "
                f"memory starts undefined on a GPU)")
        if entry is None:
            table[address] = ([block, tid, epoch, atomic, None, None, None] if write
                              else [None, None, None, False, block, tid, epoch])
            return
        w_block, w_tid, w_epoch, w_atomic, r_block, r_tid, r_epoch = entry
        earlier = None
        if w_block is not None and not (atomic and w_atomic) \
                and _unordered(block, tid, epoch, w_block, w_tid, w_epoch):
            earlier = ("atomic write" if w_atomic else "write", w_block, w_tid, w_epoch)
        elif write and r_block is not None \
                and _unordered(block, tid, epoch, r_block, r_tid, r_epoch):
            earlier = ("read", r_block, r_tid, r_epoch)
        if earlier is not None:
            access = ("atomic write" if atomic else "write") if write else "read"
            between = ("no syncthreads() between" if earlier[1] == block else
                       "the blocks of one launch run in no fixed order")
            raise DataRace(
                f"kernel {_launch['name']}: data race at {_element_name(space, *where)}: "
                f"a {access} by {_describe(block, tid, epoch)} and an earlier {earlier[0]} by "
                f"{_describe(*earlier[1:])}, {between} (threads numbered x + blockDim.x * "
                f"(y + blockDim.y * z), blocks in np.ndindex(grid) order)")
        if write:
            same_epoch = w_block == block and w_epoch == epoch
            entry[0] = MANY if w_block is not None and w_block != block else block
            entry[1] = MANY if same_epoch and w_tid != tid else tid
            entry[2] = epoch
            entry[3] = atomic and (w_atomic or not same_epoch)
        elif r_block is None or (r_block == block and r_epoch != epoch):
            entry[4], entry[5], entry[6] = block, tid, epoch
        elif r_block != block:
            entry[4] = MANY
        elif r_tid != tid:
            entry[5] = MANY


def _address(holder, ary):
    """The address of ``ary``'s first element, cached on ``holder`` (the array's wrapper)."""
    cached = holder.__dict__.get("_race_address")
    if cached is None:
        cached = holder.__dict__["_race_address"] = ary.__array_interface__["data"][0]
    return cached


def record_access(space, holder, ary, key, write):
    """Record a kernel's access ``ary[key]`` (one element, or each element of a region)."""
    if _launch is None:
        return
    offset = _element_offset(ary.shape, ary.strides, key)
    if offset is not None:
        record(space, _address(holder, ary) + offset, (ary, key, None), write)
        return
    region = np.ndarray.__getitem__(ary, key)
    start = region.__array_interface__["data"][0]
    for index in np.ndindex(*np.shape(region)):
        address = start + sum(i * stride for i, stride in zip(index, region.strides))
        record(space, address, (ary, key, index), write)


class SharedArray(np.ndarray):
    """A simulated ``cuda.shared.array`` whose element accesses are recorded."""

    def __getitem__(self, key):
        got = np.ndarray.__getitem__(self, key)
        if not isinstance(got, np.ndarray):
            record_access("shared", self, self, key, False)
        return got

    def __setitem__(self, key, value):
        record_access("shared", self, self, key, True)
        np.ndarray.__setitem__(self, key, value)


ATOMICS = ("add", "sub", "and_", "or_", "xor", "inc", "dec", "exch", "max", "min", "nanmax",
           "nanmin", "compare_and_swap", "cas")


def install():
    """Record every access of simulated kernels to shared memory and to device arrays that
    call ``record_access`` (strict_device's do), and raise DataRace on a race."""
    from numba.cuda import types
    from numba.cuda.np import numpy_support
    from numba.cuda.simulator import kernel as simulated
    from numba.cuda.simulator import kernelapi
    if getattr(simulated.FakeCUDAKernel.__call__, "checks_races", False):
        return
    launch, start_thread, run_block = (simulated.FakeCUDAKernel.__call__,
                                       simulated.BlockThread.__init__,
                                       simulated.BlockManager.run)

    def recording_launch(self, *args):
        global _launch
        if self._device or simulated._kernel_context:
            return launch(self, *args)
        _launch = {"name": self.fn.__name__, "global": {}}
        try:
            return launch(self, *args)
        finally:
            _launch = None
    recording_launch.checks_races = True

    def block_with_shared_table(self, grid_point, *args):
        self.shared_accesses = {}
        return run_block(self, grid_point, *args)

    def numbered_thread(self, f, manager, blockIdx, threadIdx, debug):
        start_thread(self, f, manager, blockIdx, threadIdx, debug)
        self.block_number = int(np.ravel_multi_index(tuple(blockIdx), manager._grid_dim))
        self.shared_accesses = manager.shared_accesses
        self.in_atomic = False

    def shared_array(self, shape, dtype, alignment=None):
        # as FakeCUDAShared.array: one array per calling line and block (all its threads),
        # but made under a lock: numba-cuda 0.30 makes it on first use without one, so two
        # threads of a block could each make their own copy (seen as a rare wrong GEMM)
        if alignment is not None:
            raise RuntimeError("Array alignment is not supported in cudasim")
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        dtype = np.dtype(dtype)
        if shape == 0:
            count = self._dynshared_size // dtype.itemsize
            return np.frombuffer(self._dynshared.data, dtype=dtype,
                                 count=count).view(SharedArray)
        caller = sys._getframe(1)
        site = (caller.f_code.co_filename, caller.f_lineno)
        with _allocation_lock:
            made = self._allocations.get(site)
            if made is None:
                made = self._allocations[site] = np.empty(shape, dtype).view(SharedArray)
        return made

    def atomic(operation):
        def recorded(self, *args):
            thread = _thread()
            if thread is None:
                return operation(self, *args)
            thread.in_atomic = True
            try:
                return operation(self, *args)
            finally:
                thread.in_atomic = False
        return recorded

    simulated.FakeCUDAKernel.__call__ = recording_launch
    simulated.BlockManager.run = block_with_shared_table
    simulated.BlockThread.__init__ = numbered_thread
    kernelapi.FakeCUDAShared.array = shared_array
    for name in ATOMICS:
        setattr(kernelapi.FakeCUDAAtomic, name,
                atomic(getattr(kernelapi.FakeCUDAAtomic, name)))
