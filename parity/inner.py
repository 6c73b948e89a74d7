"""The inner loop: its steps, its step size α, and the inner-optimiser axis (``inner_optimizer``).

An inner optimiser is a :class:`parity.parts.Part` in :data:`INNER_OPTIMIZERS` holding its
hyperparameters; its update rule is an entry of the same name in each implementation's table
(``jax_impl.meta.INNER_OPTIMIZERS``, ``torch_impl.meta.INNER_OPTIMIZERS``, ``parity.oracle``).

What the outer loop learns of the inner loop is the step size α only (``alpha_mode``: a scalar,
one per parameter entry, or one per parameter tensor and step). The optimisers' own
hyperparameters (momentum's β, Adam's β1, β2 and ε) are fixed config fields, held constant and
compared like the rest of the config, never learned.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from parity.parts import ConfigError, Part, check_bool, check_choice, check_declared, check_float, check_int, field

ALPHA_MODES = ("fixed", "scalar", "per_parameter", "per_layer_step")
ALPHA_PARAMETRISATIONS = ("identity", "softplus")


@check_declared
@dataclasses.dataclass(frozen=True)
class SGD(Part):
    """``w ← w − α ⊙ g``: the plain inner step (MAML's)."""

    axis = "inner_optimizer"
    name: str = field("sgd", "meta_gradient")


@check_declared
@dataclasses.dataclass(frozen=True)
class Momentum(Part):
    """torch.optim.SGD's momentum with dampening 0: ``v ← β·v + g``, then ``w ← w − α ⊙ v`` (heavy
    ball) or ``w ← w − α ⊙ (g + β·v)`` (Nesterov); v starts at 0, so the first step is SGD's."""

    axis = "inner_optimizer"
    name: str = field("momentum", "meta_gradient")
    momentum: float = field(0.9, "meta_gradient", "β, the momentum buffer's decay, in [0, 1)")
    nesterov: bool = field(False, "meta_gradient", "Nesterov's variant: step along g + β·v")

    def check(self) -> None:
        _check_unit("momentum", self.momentum)
        check_bool("nesterov", self.nesterov)
        object.__setattr__(self, "momentum", float(self.momentum))


@check_declared
@dataclasses.dataclass(frozen=True)
class Adam(Part):
    """torch.optim.Adam / optax.adam: ``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·g²``,
    ``w ← w − α ⊙ m̂ / (√v̂ + ε)`` with ``m̂ = m/(1−β1^t)``, ``v̂ = v/(1−β2^t)``, t = 1, 2, …; ε outside
    the root, and √ with derivative 0 at v = 0 (docs/numerics.md, "Adam in the inner loop")."""

    axis = "inner_optimizer"
    name: str = field("adam", "meta_gradient")
    beta1: float = field(0.9, "meta_gradient", "β1, the first moment's decay, in [0, 1)")
    beta2: float = field(0.999, "meta_gradient", "β2, the second moment's decay, in [0, 1)")
    eps: float = field(1e-8, "meta_gradient", "ε, added to √v̂ (outside the root)")

    def check(self) -> None:
        _check_unit("beta1", self.beta1)
        _check_unit("beta2", self.beta2)
        check_float("eps", self.eps, positive=True)
        for name in ("beta1", "beta2", "eps"):
            object.__setattr__(self, name, float(getattr(self, name)))


def _check_unit(name: str, value: Any) -> None:
    check_float(name, value)
    if not 0 <= value < 1:
        raise ConfigError(name, f"must be in [0, 1), got {value}")


INNER_OPTIMIZERS: dict[str, type[Part]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "adam": Adam,
}


@check_declared
@dataclasses.dataclass(frozen=True)
class InnerLoop(Part):
    """T steps of the inner optimiser on the support loss, differentiated through."""

    # A frozen part: one shared default instance is safe.
    optimizer: Any = field(SGD(), "meta_gradient", "the inner optimiser (axis inner_optimizer)")  # noqa: RUF009
    inner_steps: int = field(3, "meta_gradient", "T; 0 means no adaptation")
    # per_layer_step is MAML++'s LSLR (Antoniou et al. 2019): α[name] [T], the step size of the
    # parameter tensor `name` at inner step t is α[name][t − 1]; evaluation's steps past T reuse α[name][T − 1].
    alpha_mode: str = field(
        "fixed",
        "meta_gradient",
        "fixed | scalar (seed part 4) | per_parameter (Meta-SGD) | per_layer_step (LSLR: one per tensor per step)",
    )
    alpha_init: float = field(0.03, "data", "α, or the initial value of every entry of a learned α")
    # A negative alpha_init climbs the inner loss; refused unless asked for with this set true.
    allow_negative_alpha: bool = field(False, "data", "allow a negative alpha_init")
    # What the outer loop learns for a learned α: α itself (identity), or ρ with α = softplus(ρ)
    # (softplus), which keeps α > 0 whatever the updates; ρ starts where softplus(ρ) = alpha_init.
    alpha_parametrisation: str = field("identity", "training", "identity | softplus (α = softplus(ρ))")
    first_order: bool = field(False, "meta_gradient", "treat inner gradients as constants (FOMAML)")
    # Rematerialise the inner loop: keep only each step's parameters for the backward pass and
    # recompute the rest (activations, inner gradients) there; less memory for long unrolls
    # (T in the hundreds), about one more forward pass of time. Same gradients.
    remat: bool = field(False, "meta_gradient", "rematerialise the inner loop (O(√T) memory)")
    # MAML++'s multi-step loss (Antoniou et al. 2019): the outer loss is Σ_t w_t·L_query(θ_t) over
    # the parameters after each inner step t = 1..T, Σ w = 1 (msl_weights). Off: L_query(θ_T), as before.
    msl: bool = field(False, "meta_gradient", "multi-step loss: weighted query losses after every inner step")
    # Only the training schedule: at outer step 0 (the contract's call) the weights are uniform
    # whatever msl_anneal is, so it does not change the meta-gradient the check compares.
    msl_anneal: int = field(0, "training", "outer steps over which the MSL weights move to the last step (0: uniform)")
    first_order_steps: int = field(0, "training", "the first N outer steps are first order, the rest second order")

    def check(self) -> None:
        self._check_alpha()
        check_bool("first_order", self.first_order)
        check_bool("remat", self.remat)
        check_bool("msl", self.msl)
        check_int("msl_anneal", self.msl_anneal, minimum=0)
        check_int("first_order_steps", self.first_order_steps, minimum=0)
        if self.msl and self.inner_steps == 0:
            raise ConfigError("msl", "the multi-step loss needs inner_steps >= 1 (a query loss after each step)")
        object.__setattr__(self, "alpha_init", float(self.alpha_init))

    def _check_alpha(self) -> None:
        if not isinstance(self.optimizer, Part) or self.optimizer.axis != "inner_optimizer":
            raise ConfigError("inner_optimizer", f"must be one of {', '.join(INNER_OPTIMIZERS)}")
        check_int("inner_steps", self.inner_steps, minimum=0)
        check_choice("alpha_mode", self.alpha_mode, ALPHA_MODES)
        if self.alpha_mode == "per_layer_step" and self.inner_steps == 0:
            raise ConfigError("alpha_mode", "per_layer_step needs inner_steps >= 1 (one alpha per step)")
        check_float("alpha_init", self.alpha_init)
        check_bool("allow_negative_alpha", self.allow_negative_alpha)
        check_choice("alpha_parametrisation", self.alpha_parametrisation, ALPHA_PARAMETRISATIONS)
        if self.alpha_parametrisation == "softplus":
            if self.alpha_mode == "fixed":
                raise ConfigError(
                    "alpha_parametrisation",
                    "softplus applies to a learned alpha (alpha_mode scalar, per_parameter or per_layer_step); "
                    "alpha_mode is fixed",
                )
            check_float("alpha_init", self.alpha_init, positive=True, why=" (alpha_parametrisation softplus)")
        if self.alpha_init < 0 and not self.allow_negative_alpha:
            raise ConfigError(
                "alpha_init",
                f"must be >= 0, got {self.alpha_init} (a negative alpha climbs the inner loss; "
                "set allow_negative_alpha to true to run it anyway)",
            )

    @property
    def alpha_learned(self) -> bool:
        """Whether the outer loop updates α."""
        return self.alpha_mode != "fixed"


def alpha_shapes(cfg: Any) -> dict[str, tuple[int, ...]] | None:
    """α's shapes for a config: None for one 0-d α (fixed, scalar); else per parameter name the
    parameter's shape (per_parameter) or (T,) (per_layer_step: one α per tensor per inner step)."""
    if cfg.alpha_mode == "per_parameter":
        return dict(cfg.param_shapes)
    if cfg.alpha_mode == "per_layer_step":
        return {name: (cfg.inner_steps,) for name in cfg.param_shapes}
    return None


# MAML++'s floor for the weights of the steps before the last, times 1/T (its code's 0.03 / T).
MSL_FLOOR = 0.03


def msl_weights(inner: InnerLoop, outer_step: int) -> tuple[float, ...]:
    """The multi-step loss's weights w_1..w_T at ``outer_step`` (0, 1, …), Σ w = 1; a pure function
    of the config and the step (the contract's call is step 0: uniform 1/T).

    MAML++'s schedule (its ``get_per_step_loss_importance_vector``) with the outer step in place of
    its epoch: with N = ``msl_anneal`` and d = 1/(T·N), the steps before the last get
    ``max(1/T − s·d, 0.03/T)`` and the last ``min(1/T + s·(T−1)·d, 1 − (T−1)·0.03/T)``. Both bounds
    bind from the same step (s = 0.97·N), so the weights sum to 1 at every step. N = 0: uniform.
    """
    T = inner.inner_steps
    uniform = 1.0 / T
    if inner.msl_anneal == 0 or T == 1:
        return (uniform,) * T
    decay = outer_step / (T * inner.msl_anneal)
    floor = MSL_FLOOR / T
    early = max(uniform - decay, floor)
    last = min(uniform + (T - 1) * decay, 1.0 - (T - 1) * floor)
    return (early,) * (T - 1) + (last,)


def msl_table(inner: InnerLoop) -> tuple[tuple[float, ...], ...]:
    """The weights of outer steps 0..N (N = ``msl_anneal``): row min(s, N) is step s's, since the
    schedule has reached its floor by step N. Twins index it with the (possibly traced) step."""
    return tuple(msl_weights(inner, s) for s in range(inner.msl_anneal + 1))
