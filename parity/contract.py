"""The contract every implementation meets: the built-in twins, the NumPy oracle, and yours.

A third party implements exactly :class:`Implementation` — an object with a ``name`` and one
method — and nothing else is required::

    class MyMAML:
        name = "mine"

        def meta_value_and_grad(self, params, alpha, tasks, cfg):
            ...  # NumPy in, NumPy out
            return {"outer_loss": loss, "inner_losses": inner, "grads": grads, "alpha_grad": dalpha}

Arguments (all NumPy, in ``cfg.dtype``):

- ``params``: ``{name: ndarray}``, names ``w0, b0, w1, b1, …``; weights are ``(out, in)`` as in
  ``torch.nn.Linear``, biases ``(out,)``; the MLP is ``1 → cfg.hidden … → 1`` with
  ``cfg.activation`` between layers and none after the last.
- ``alpha``: a 0-d ndarray (the inner learning rate α itself, also under the softplus
  parametrisation), or ``{name: ndarray}``: shaped like ``params`` when ``cfg.alpha_mode`` is
  ``per_parameter``, ``[T]`` each when it is ``per_layer_step`` (LSLR: α[name][t − 1] steps
  parameter ``name`` at inner step t).
- ``tasks``: ``(x_support [B, K, 1], y_support [B, K, 1], x_query [B, Q, 1], y_query [B, Q, 1])``.
- ``cfg``: :class:`parity.config.Config` (read ``inner_steps``, ``loss``, ``activation``,
  ``first_order``; the rest describes how the data were made).

The objective: for each task, ``T = cfg.inner_steps`` SGD steps ``w ← w − α ⊙ ∇L_support(w)``
from ``params``, differentiated through (second order) unless ``cfg.first_order`` (then each inner
gradient is a constant; α still gets a gradient); the outer loss is ``L_query(w_T)``. Losses are
the mean over points (``l1``: mean |error|; ``mse``: mean error²), then the mean over tasks.

Returns a dict (NumPy, ``cfg.dtype``): ``outer_loss`` 0-d; ``inner_losses`` ``[T]`` (meta-batch
mean support loss before each inner step); ``grads`` ``{name: ndarray}`` (dL/dparams);
``alpha_grad`` 0-d or ``{name: ndarray}`` (dL/dα). Under a fixed α (``cfg.alpha_mode ==
"fixed"``) dL/dα is optional: return None and it is reported as not compared (many libraries
take the learning rate as a plain float); in the other modes it is required.

Optional capabilities, looked up by name (an implementation without one is reported
``unsupported`` for the cases that need it, never as passing):

- ``supports(cfg) -> str | None``: a reason when a case is not supported, else None;
- ``train_trajectory(cfg, steps) -> dict``: ``params/<name>``, ``alpha`` (or ``alpha/<name>``) after
  ``steps`` outer steps from ``parity.init``'s start on ``parity.tasks``' batches, and
  ``outer_loss`` ``[steps]`` (the trajectory cases); optionally also every step's values,
  ``trajectory/params/<name>`` ``[steps, *shape]`` and ``trajectory/alpha`` ``[steps]`` (or
  ``trajectory/alpha/<name>`` ``[steps, *shape]``), row k after outer step k, which locate the
  first outer step at which two trajectories part (compared when both sides return them);
- ``stability_gains(params, alpha, tasks, cfg) -> ndarray [B, T]``: the stability gate's per-step
  gains (the harness takes them from the first implementation that offers them);
- ``trace(params, alpha, tasks, cfg) -> dict``: the inner loop recorded, for locating a first
  divergence. Same arguments as ``meta_value_and_grad``; returns flat NumPy arrays in
  ``cfg.dtype``, for task b and inner step t:

  - ``trace/support_loss`` ``[B, T]``: task b's support loss at step t, before the update;
  - ``trace/inner_grad/<name>`` ``[B, T, *shape]``: the inner gradient ∇L_support(w_t) of step t;
  - ``trace/adapted/<name>`` ``[B, T, *shape]``: the parameters w_{t+1} after step t;
  - ``trace/query_loss`` ``[B]``: task b's query loss after the last step, under ``msl`` its
    multi-step loss (the outer loss is its mean).

  and, optional (compared where both sides hold them):

  - ``trace/state/<slot>/<name>`` ``[B, T, *shape]``: the inner optimiser's state after step t
    (``momentum``; Adam's ``m`` and ``v``);
  - ``trace/activation/<layer>`` ``[B, T, P, *shape]``: the model's layer outputs on the support
    set with w_t, for a model with ``Config.traced_layers`` (the conv net: ``block<i>`` after its
    ReLU and pool, in the exchange layout [C, H, W]).

  ``check`` compares two traces in this order (step 0's layer outputs, support loss, inner
  gradients, optimiser state and adapted parameters, then step 1's, …, then the query losses) to
  name the first point at which two implementations part: a forward-pass bug by its first block.
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict, runtime_checkable

import numpy as np

from parity.config import Config
from parity.inner import alpha_shapes


class MetaResult(TypedDict):
    outer_loss: np.ndarray  # []
    inner_losses: np.ndarray  # [T]
    grads: dict[str, np.ndarray]  # dL/dparams, shaped like params
    alpha_grad: Any  # [] or {name: ndarray}


@runtime_checkable
class Implementation(Protocol):
    """The minimal contract: ``name`` and ``meta_value_and_grad`` (see the module docstring)."""

    name: str

    def meta_value_and_grad(
        self, params: dict[str, np.ndarray], alpha: Any, tasks: tuple[np.ndarray, ...], cfg: Config
    ) -> MetaResult: ...


class ContractError(ValueError):
    """An implementation returned something that is not what the contract asks for."""


RESULT_KEYS = ("outer_loss", "inner_losses", "grads", "alpha_grad")


def unsupported_reason(impl: Any, cfg: Config) -> str | None:
    """The implementation's own reason for not supporting ``cfg`` (its optional ``supports``)."""
    supports = getattr(impl, "supports", None)
    if supports is None:
        return None
    reason = supports(cfg)
    return None if reason is None else str(reason)


def flatten_result(result: Any, cfg: Config, who: str) -> dict[str, np.ndarray]:
    """A contract result as flat NumPy leaves (``outer_loss``, ``inner_losses``, ``grad/<name>``,
    ``grad/alpha`` or ``grad/alpha/<name>``), after checking keys, shapes and dtype. A None
    ``alpha_grad`` (allowed under a fixed α only) leaves ``grad/alpha`` out.

    Raises :class:`ContractError` naming the implementation and the first thing that is wrong.
    """
    if not isinstance(result, dict):
        raise ContractError(f"{who}: meta_value_and_grad must return a dict, got {type(result).__name__}")
    missing = [key for key in RESULT_KEYS if key not in result]
    if missing:
        raise ContractError(f"{who}: the result lacks {missing} (needs {list(RESULT_KEYS)})")
    shapes = cfg.param_shapes
    flat: dict[str, Any] = {"outer_loss": result["outer_loss"], "inner_losses": result["inner_losses"]}
    expected: dict[str, tuple[int, ...]] = {"outer_loss": (), "inner_losses": (cfg.inner_steps,)}
    grads = result["grads"]
    if not isinstance(grads, dict) or set(grads) != set(shapes):
        got = sorted(grads) if isinstance(grads, dict) else type(grads).__name__
        raise ContractError(f"{who}: grads must be a dict with keys {sorted(shapes)}, got {got}")
    for name, shape in shapes.items():
        flat[f"grad/{name}"] = grads[name]
        expected[f"grad/{name}"] = shape
    alpha_grad = result["alpha_grad"]
    if alpha_grad is None:
        if cfg.alpha_mode != "fixed":
            raise ContractError(
                f"{who}: alpha_grad is None, allowed only for alpha_mode 'fixed' (got {cfg.alpha_mode!r})"
            )
    elif (a_shapes := alpha_shapes(cfg)) is not None:
        if not isinstance(alpha_grad, dict) or set(alpha_grad) != set(a_shapes):
            raise ContractError(
                f"{who}: alpha_grad must be a dict with keys {sorted(a_shapes)} in {cfg.alpha_mode} mode"
            )
        for name, shape in a_shapes.items():
            flat[f"grad/alpha/{name}"] = alpha_grad[name]
            expected[f"grad/alpha/{name}"] = shape
    else:
        if isinstance(alpha_grad, dict):
            raise ContractError(f"{who}: alpha_grad must be a 0-d array for alpha_mode {cfg.alpha_mode!r}")
        flat["grad/alpha"] = alpha_grad
        expected["grad/alpha"] = ()
    out: dict[str, np.ndarray] = {}
    for key, value in flat.items():
        if not isinstance(value, np.ndarray | np.generic):
            raise ContractError(f"{who}: {key} must be a NumPy array, got {type(value).__name__}")
        array = np.asarray(value)
        if array.shape != expected[key]:
            raise ContractError(f"{who}: {key} has shape {list(array.shape)}, expected {list(expected[key])}")
        if array.dtype != np.dtype(cfg.dtype):
            raise ContractError(f"{who}: {key} is {array.dtype}, expected {cfg.dtype} (no silent change of precision)")
        out[key] = array
    return out


def describe(impl: Any) -> str:
    """A short name for messages: the implementation's ``name``, else its type."""
    return str(getattr(impl, "name", type(impl).__name__))
