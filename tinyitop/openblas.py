"""CPU aside, run first by `import tinyitop`: let OpenBLAS's idle threads sleep at once.

After each matrix product OpenBLAS's idle threads spin for ~2^28 cycles, holding the core that
tinyitop's own threads (threads.py) want next; OPENBLAS_THREAD_TIMEOUT=4 lets them sleep at once.
Without it, splitting the passes between products over two cores gains nothing (docs/SPEED.md).
OpenBLAS reads the variable when NumPy loads, so it takes effect only when tinyitop is imported
before NumPy (the command line, the demos); a value already set is kept. This module imports
nothing that loads NumPy.
"""
import os
import sys

# NumPy already loaded without the variable: too late here, said in the run's log (threads.blas_note).
BLAS_SPINS = "numpy" in sys.modules and "OPENBLAS_THREAD_TIMEOUT" not in os.environ
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
