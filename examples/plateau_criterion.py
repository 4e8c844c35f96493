"""A stopping criterion of one's own, in one file: stop once L_det has reached a plateau.

    python -m benchmark.run strategy=custom strategy.criterion=examples/plateau_criterion.py:Plateau \
        +strategy.params.window=50 +strategy.params.threshold=0.01
    python -m analysis replay experiment=NAME criterion=examples/plateau_criterion.py:Plateau \
        window=20,50 threshold=0.005,0.01

Plateau compares the mean of the last `window` L_det values with the mean of the `window` values
before them and stops once the relative drop is below `threshold`. Any Criterion subclass works the
same way: `signal` names what it watches ("l_det" after every update, or "train_clip_img" at each
evaluation, every strategy.eval_every updates), `update(step, value)` returns True to stop at `step`,
`self.value` is logged in the steps records, and its plain attributes are its state in snapshots. Its
keyword arguments are the keys of `strategy.params` and of a replay grid.
"""

from __future__ import annotations

import math

from benchmark.core.errors import ConfigError
from benchmark.protocol.stopping import Criterion


class Plateau(Criterion):
    name = "plateau"  # its replay's output file: replay_plateau.csv
    signal = "l_det"

    def __init__(self, window: int = 20, threshold: float = 0.01):
        super().__init__()
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"Plateau window must be an integer >= 1 (got {window!r}); set +strategy.params.window.")
        if not isinstance(threshold, (int, float)) or not threshold > 0:
            raise ConfigError(f"Plateau threshold must be a number > 0 (got {threshold!r}); "
                              "set +strategy.params.threshold.")
        self.window = window
        self.threshold = float(threshold)
        self.history: list[float] = []  # the last 2 x window values

    def update(self, step: int, value: float) -> bool:
        self.history = [*self.history[-(2 * self.window - 1):], float(value)]
        if len(self.history) < 2 * self.window:
            return False
        before = math.fsum(self.history[:self.window]) / self.window
        now = math.fsum(self.history[self.window:]) / self.window
        self.value = (before - now) / abs(before) if before else math.nan  # NaN never stops
        return self._decide(step, self.value < self.threshold)
