"""Progress bars on a terminal and none in a log: a bar redirected to a file would add a line at every update,
so where stderr is not a terminal the bars are off and the commands' own lines (one per epoch) remain."""

import sys

from tqdm.auto import tqdm


def bar(iterable=None, *, enabled=True, **options):
    """``tqdm(iterable, **options)``, shown only where ``enabled`` and stderr is a terminal."""
    return tqdm(iterable, disable=not (enabled and sys.stderr.isatty()), **options)


def say(line):
    """Print ``line`` to stdout without breaking a bar on the terminal."""
    tqdm.write(line)
