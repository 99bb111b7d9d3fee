"""CPU aside: the second core for NumPy's single-threaded passes (NumPy releases the GIL in them).

BLAS uses every core for the matrix products, but the passes between them (im2col/col2im,
BatchNorm, ReLU, pooling) are NumPy loops on one core, and on a narrow conv net they take most of a
step (docs/SPEED.md). Activations are channel-major buffers (C, N, H, W) seen as NCHW, and each of
those passes treats channels independently, so `per_channel` runs the same plain expression on
contiguous blocks of channels, one per thread. Every channel is computed by the same code in the
same order as in one block: results are bit-identical whatever the thread count (tested).
On a GPU, and for arrays too small to repay a thread hand-off, the block is the whole array.
"""
import os
from concurrent.futures import ThreadPoolExecutor

from tinyitop import backend as B

# Below this many bytes touched a pass is not split: waking a worker and waiting for it costs as much
# as a pass over a few MiB. The break-even is measured by benchmarks/bench_threads.py (docs/SPEED.md).
SPLIT_MIN_BYTES = 4 << 20
CORES = os.cpu_count() or 1     # read once: every pass asks thread_count(), ~400 times a VGG step


def thread_count():
    """TINYITOP_THREADS, else min(2, cores); 1 turns threads off (the sweep runner's one process per core).
    A bad value is a ValueError naming the variable (the command line checks it before any work)."""
    value = os.environ.get("TINYITOP_THREADS", "")
    if not value:
        return max(1, min(2, CORES))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"TINYITOP_THREADS must be a positive integer (or unset), got {value!r}")
    return int(value)


_pools = {}         # thread count -> ThreadPoolExecutor, made at first use (not at import)


def pool():
    """The shared thread pool, or None when threads are off (TINYITOP_THREADS=1) or on CuPy."""
    threads = thread_count()
    if B.name != "numpy" or threads < 2:
        return None
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads)
    return _pools[threads]


def parallel(tasks):
    """Run zero-argument functions, spread over the cores on NumPy; returns their results in order.
    The first runs on the calling thread, which would otherwise only wait."""
    workers = pool() if len(tasks) > 1 else None
    if workers is None:
        return [task() for task in tasks]
    futures = [workers.submit(task) for task in tasks[1:]]
    first = tasks[0]()
    return [first] + [future.result() for future in futures]


def blas_note():
    """A line for the run log when OpenBLAS's idle threads spin (NumPy loaded before tinyitop), else None."""
    import tinyitop
    if pool() is None or not tinyitop.BLAS_SPINS:
        return None
    return ("note: NumPy was imported before tinyitop, so OpenBLAS's idle threads spin and hold the core that "
            "tinyitop's threads want (conv steps ~1.3x slower); import tinyitop first or export OPENBLAS_THREAD_TIMEOUT=4")


def per_channel(math, *arrays, touched):
    """Run math(*[a[:, c] for a in arrays]) for blocks of channels c (axis 1 of every array) covering
    them all, on two threads when the pass touches at least SPLIT_MIN_BYTES (`touched`, in bytes).
    `math` is a layer's plain expression writing its results into some of the arrays; with one block
    it runs on the whole arrays, as written."""
    over_channels(lambda c: math(*[a[:, c] for a in arrays]), arrays[0].shape[1], touched)


def over_channels(block, channels, nbytes):
    """Call block(c) for slices c that cover range(channels), in parallel when `nbytes` (the data the
    pass touches) is at least SPLIT_MIN_BYTES. block(c) must touch channels c only."""
    workers = pool() if nbytes >= SPLIT_MIN_BYTES and channels > 1 else None
    if workers is None:
        block(slice(0, channels))
        return
    parts = min(thread_count(), channels)
    bounds = [channels * i // parts for i in range(parts + 1)]
    parallel([lambda a=a, b=b: block(slice(a, b)) for a, b in zip(bounds, bounds[1:])])
