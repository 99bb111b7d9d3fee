"""Option checks shared by the benchmarks: every value is checked before any timing, and a bad one is
one `error:` line naming the option, exit status 2 (argparse's own errors are one line too)."""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from a checkout
from tinyitop.atomic import check_target  # noqa: E402
from tinyitop.options import Parser, fail, whole_number  # noqa: E402,F401  (one-line refusals, for every benchmark)


# Every number has a ceiling: a benchmark's larger values would not finish or not fit in memory, and
# the fault matrix (tests/test_fault_matrix_benchmarks.py) gives each option a huge value.
repeats = whole_number(1, 10_000)              # timed calls per figure
batch_size = whole_number(1, 8192)             # columns of a product; 8192 x 3072 floats is 100 MB


def fraction(text):
    """A number strictly between 0 and 1 (a sparsity)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:                          # nan fails both comparisons
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text!r}")
    return value


def positive_number(maximum):
    """An argparse type: a finite number in (0, maximum] (a width, a scale)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in (0, {maximum:g}], got {text!r}") from None
        if not (math.isfinite(value) and 0 < value <= maximum):
            raise argparse.ArgumentTypeError(f"must be a finite number in (0, {maximum:g}], got {text!r}")
        return value
    return parse


def writable_file(path, option):
    """Refuse, before any timing, an output path whose folder does not exist or cannot be written, a
    folder, or a file that exists (nothing of the user's is overwritten)."""
    try:
        check_target(path, overwrite_option=None, create_folder=False)
    except OSError as err:
        fail(f"{option}: {err}")


def choices_list(text, allowed, option):
    """'a,b' -> ['a', 'b'], each one of `allowed`, at least one."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in allowed]
    if not values or unknown:
        fail(f"{option} {text!r}: choose one or more of {', '.join(allowed)}, comma-separated")
    return values
