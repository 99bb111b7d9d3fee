"""Command-line parsing shared by tinyitop's commands and scripts: a bad option is one `error:` line
naming it, exit status 2 (argparse's default prints the usage too), never a traceback."""
import argparse
import sys


class Parser(argparse.ArgumentParser):
    """argparse, with its refusals in one line (what is wrong, where to look)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def fail(message):
    """One error line and exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def whole_number(minimum, maximum=None):
    """An argparse type: a whole number >= `minimum` (and <= `maximum`, where a larger one cannot run)."""
    span = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number {span}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value
    return parse


seed = whole_number(0)          # NumPy's generators refuse negative seeds
