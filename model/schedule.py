"""Learning-rate schedules for runs that grow chunk by chunk.

`wsd` (the default): warmup -> stable -> decay (Hägele et al. 2024; modded-nanogpt and nanochat cool down
the same way). Linear warmup over `warmup` iterations, then the full learning rate, then a linear cooldown
to `min_lr` over the last `cooldown` iterations of the run as planned *now* (chunks x iters_per_chunk).
The cooldown is a number of iterations (`cooldown >= 1`) or a fraction of the run (`0 < cooldown < 1`).
Iteration `cooldown_start(total)` is where the cooldown begins; training saves a checkpoint there, and a run
that is extended after cooling down goes back to it. Since a longer plan only moves the cooldown later, every
iteration before the old cooldown start keeps its learning rate, and a run planned for 1 chunk then extended
to 3 ends bit-identical to one planned for 3.

`cosine`: nanoGPT's linear warmup then cosine decay to `min_lr` at an explicit `total` that never changes;
iterations past it train at `min_lr`. Good for a run whose length is known in advance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from model.errors import CookError

KINDS = ("wsd", "cosine")
DEFAULT_COOLDOWN = 0.2


def parse_cooldown(value: float | int | str | None) -> float | int | None:
    """`--cooldown`: iterations (an integer >= 1, or 0 for none) or a fraction of the run in (0, 1)."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise CookError(f"--cooldown must be a number of iterations or a fraction in (0, 1) (got {value!r})") from None
    if not math.isfinite(x):
        raise CookError(f"--cooldown must be a number of iterations or a fraction in (0, 1) (got {value!r})")
    if x >= 1 or x == 0:
        if x != int(x):
            raise CookError(f"--cooldown {value}: a cooldown of 1 or more is a whole number of iterations")
        return int(x)
    if not 0 < x < 1:
        raise CookError(f"--cooldown must be a number of iterations or a fraction in (0, 1) (got {value!r})")
    return x


@dataclass(frozen=True)
class Schedule:
    """How the learning rate of an iteration follows from the run's planned length (see the module doc)."""

    kind: str = "wsd"
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    cooldown: float | int = DEFAULT_COOLDOWN  # wsd: iterations, or a fraction of the planned run
    total: int | None = None  # cosine: the fixed length of the decay

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_run(cls, info: dict) -> "Schedule":
        """The schedule recorded in a run.json; runs made before schedules existed are cosine over total_iters."""
        t = info["train"]
        if "schedule" in info:
            return cls(**info["schedule"])
        return cls("cosine", t["learning_rate"], t["min_lr"], t["warmup_iters"], 0, int(info["total_iters"]))

    def cooldown_iters(self, total: int) -> int:
        if self.kind != "wsd":
            return 0
        if isinstance(self.cooldown, float):
            return int(round(self.cooldown * total))
        return int(self.cooldown)

    def cooldown_start(self, total: int) -> int:
        """First iteration of the cooldown in a run planned for `total` iterations (`total` if there is none)."""
        return total - self.cooldown_iters(total)

    def check(self, total: int) -> None:
        """CookError with one line if the schedule does not fit a run of `total` iterations."""
        if self.kind not in KINDS:
            raise CookError(f"--schedule must be one of {', '.join(KINDS)} (got {self.kind!r})")
        if self.warmup < 0:
            raise CookError(f"--warmup must be >= 0 (got {self.warmup})")
        if self.kind == "cosine":
            end = self.total if self.total is not None else total
            if self.warmup >= end:
                raise CookError(f"warmup of {self.warmup} iterations is not shorter than the cosine schedule's "
                                f"{end} (--total-iters): lower --warmup or raise --total-iters")
            return
        cool = self.cooldown_iters(total)
        if cool >= total and total > 0:
            raise CookError(f"cooldown of {cool} iterations leaves nothing of the run's {total} iterations before it: lower --cooldown")
        if self.warmup > total - cool:
            raise CookError(f"warmup of {self.warmup} iterations runs past the cooldown start at iteration {total - cool} "
                            f"of this {total}-iteration run: lower --warmup, or plan more --chunks now")

    def lr_at(self, it: int, total: int) -> float:
        """Learning rate of iteration `it` (0-based) in a run planned for `total` iterations (wsd)."""
        if it < self.warmup:
            return self.lr * (it + 1) / (self.warmup + 1)
        if self.kind == "cosine":
            end = self.total if self.total is not None else total
            if it >= end:
                return self.min_lr
            ratio = (it - self.warmup) / (end - self.warmup)
            return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.lr - self.min_lr)
        start = self.cooldown_start(total)
        if it < start:
            return self.lr
        if it >= total:
            return self.min_lr
        return self.min_lr + (self.lr - self.min_lr) * (total - it) / (total - start)
