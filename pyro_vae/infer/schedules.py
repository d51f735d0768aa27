"""Learning-rate schedules chosen by name: the factor by which epoch e (0-based) multiplies ``train.lr``.

The factor depends on the epoch alone, so a run resumed at any step continues with the learning rate
an uninterrupted run has there; the trainer sets it at the start of every epoch and logs it.
"""

import bisect
from itertools import accumulate
from typing import Annotated

from ..registry import Count, Range, Registry

SCHEDULES = Registry("schedule")


@SCHEDULES.register("constant")
class Constant:
    """lr(e) = lr."""

    def factor(self, epoch):
        return 1.0


@SCHEDULES.register("step")
class Step:
    """lr(e) = lr · gamma^⌊e / every⌋: divided by 1/gamma every ``every`` epochs."""

    def __init__(self, *, every: Count = 10, gamma: Annotated[float, Range(0, 1, open_low=True)] = 0.5):
        self.every, self.gamma = every, gamma

    def factor(self, epoch):
        return self.gamma ** (epoch // self.every)


@SCHEDULES.register("burda")
class Burda:
    """Burda, Grosse & Salakhutdinov (2016): for i = 0 … stages − 1, 3ⁱ passes at lr · 10^(−i/7); the
    eight stages make 3,280 passes. ``length`` < 3,280 compresses the stages in proportion (stage i
    covers the epochs whose scaled position e · 3280 / length falls in it), for budgets shorter than the
    paper's; epochs past the last stage keep its rate."""

    def __init__(self, *, length: Count = 3280, stages: Annotated[int, Range(1, 20)] = 8):
        self.ends = list(accumulate(3**i for i in range(stages)))  # 1, 4, 13, 40, 121, 364, 1093, 3280
        self.scale = self.ends[-1] / length

    def factor(self, epoch):
        stage = bisect.bisect_right(self.ends, epoch * self.scale + 1e-9)
        return 10 ** (-min(stage, len(self.ends) - 1) / 7)
