"""The outer loop and the numerics: the two parts every config has whatever its axes choose."""

from __future__ import annotations

import dataclasses

from parity.parts import Part, check_choice, check_declared, check_float, check_int, field, set_float

OPTIMIZERS = ("sgd", "adam")
DTYPES = ("float32", "float64")


@check_declared
@dataclasses.dataclass(frozen=True)
class OuterLoop(Part):
    """The outer loop: what learns the initial parameters (and a learned α), on how many tasks."""

    outer_optimizer: str = field("sgd", "training", "for the initial parameters: sgd | adam")
    outer_lr: float = field(1e-2, "training", "the outer learning rate")
    alpha_optimizer: str = field("adam", "training", "for a learned α: sgd | adam")
    alpha_lr: float = field(1e-4, "training", "α's learning rate")
    # The same function of any number of tasks (a mean over them): not part of the compile key.
    meta_batch: int = field(1, "training", "B: tasks per outer step (the seed uses one)")
    iterations: int = field(5000, "training", "outer steps")

    def check(self) -> None:
        check_choice("outer_optimizer", self.outer_optimizer, OPTIMIZERS)
        check_float("outer_lr", self.outer_lr, positive=True)
        check_choice("alpha_optimizer", self.alpha_optimizer, OPTIMIZERS)
        check_float("alpha_lr", self.alpha_lr, positive=True)
        check_int("meta_batch", self.meta_batch, minimum=1)
        check_int("iterations", self.iterations, minimum=0)
        set_float(self, "outer_lr")
        set_float(self, "alpha_lr")


@check_declared
@dataclasses.dataclass(frozen=True)
class Numerics(Part):
    """Precision and randomness."""

    dtype: str = field("float32", "meta_gradient", "float32 | float64")
    seed: int = field(0, "data", "drives the task sampler and the initial parameters")

    def check(self) -> None:
        check_choice("dtype", self.dtype, DTYPES)
        check_int("seed", self.seed, minimum=0)
