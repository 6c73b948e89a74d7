"""Shape and dtype checks for arrays handed to the twins' public functions (framework-neutral).

Each twin describes its arguments as :class:`Spec` trees (``jax_impl.model.check_inputs``,
``torch_impl.model.check_inputs``) and hands them to :func:`check_call`, so both twins raise the
same error with the same words. The checks read shapes and dtypes only: in JAX they run when a
function is traced (once per compile), in PyTorch once per public call, never per inner step.

A wrong shape or structure raises :class:`ArrayShapeError` (a ``ValueError``); a wrong dtype, or a
value that is not an array of the twin's framework, raises :class:`ArrayTypeError` (a
``TypeError``). Both are :class:`TwinInputError`, and the message names the function, the
argument, what it must be and what it got, e.g.
``meta_loss: tasks[0] (x_support) must be float64 [B, K, 1]; got float64 [4, 1]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from parity.config import Config

TASK_NAMES = ("x_support", "y_support", "x_query", "y_query")
TASK_PATTERNS = ("[B, K, 1]", "[B, K, 1]", "[B, Q, 1]", "[B, Q, 1]")
FLOAT_DTYPES = ("float32", "float64")


class TwinInputError(Exception):
    """An argument of a twin's public function that does not fit its documented shape or dtype."""


class ArrayShapeError(TwinInputError, ValueError):
    """An array of the wrong shape, or a tree of arrays of the wrong structure."""


class ArrayTypeError(TwinInputError, TypeError):
    """A value that is not an array of the twin's framework, or an array of the wrong dtype."""


class Spec(NamedTuple):
    """What the checks know of one array: its shape and the name of its dtype."""

    shape: tuple[int, ...]
    dtype: str  # "float32", "float64", "int64", ...

    def __str__(self) -> str:
        return f"{self.dtype} {shape_text(self.shape)}"


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_call(
    function: str,
    cfg: Config | None,
    params: Any = None,
    alpha: Any = None,
    x: Any = None,
    y: Any = None,
    tasks: Any = None,
    batched_params: bool = False,
) -> None:
    """Check the described arguments of ``function``; the arguments not given are not checked.

    ``cfg`` None (``forward``): ``x`` must be [..., P, 1] of the parameters' float dtype.
    ``batched_params``: the parameters may carry the leading task axes of ``x`` (``inner_loss``).
    """
    if cfg is None:
        _check_forward(function, params, x)
        return
    if tasks is not None:
        _check_tasks(function, tasks, cfg)
    if x is not None:
        _check_points(function, "x", x, cfg.dtype)
    if y is not None:
        _check_points(function, "y", y, cfg.dtype)
        if x is not None and x.shape != y.shape:
            raise ArrayShapeError(f"{function}: x and y must have the same shape; got {x} and {y}")
    if params is not None:
        leading = x.shape[:-2] if batched_params and isinstance(x, Spec) else ()
        _check_params(function, "params", params, cfg, leading)
    if alpha is not None:
        _check_alpha(function, alpha, cfg)


def _check_forward(function: str, params: Any, x: Any) -> None:
    if not isinstance(params, Mapping) or "w0" not in params or not isinstance(params["w0"], Spec):
        raise ArrayTypeError(f"{function}: params must be a dict of arrays with keys w0, b0, w1, ...")
    dtype = params["w0"].dtype
    if dtype not in FLOAT_DTYPES:
        raise ArrayTypeError(f"{function}: params['w0'] must be float32 or float64; got {params['w0']}")
    _check_points(function, "x", x, dtype)


def _check_points(function: str, argument: str, spec: Any, dtype: str, pattern: str = "[..., P, 1]") -> None:
    """Points ``x`` or ``y``: at least 2-d, last axis 1, of ``dtype``."""
    if not isinstance(spec, Spec):
        raise ArrayTypeError(f"{function}: {argument} must be one array {dtype} {pattern}; got a {_kind(spec)}")
    if spec.dtype != dtype:
        raise ArrayTypeError(f"{function}: {argument} must be {dtype} {pattern}; got {spec}")
    if len(spec.shape) < 2 or spec.shape[-1] != 1:
        raise ArrayShapeError(f"{function}: {argument} must be {dtype} {pattern}; got {spec}")


def _check_params(function: str, argument: str, specs: Any, cfg: Config, leading: tuple[int, ...] = ()) -> None:
    """Exactly ``cfg.param_names``, each of ``cfg.param_shapes`` (after ``leading`` task axes, if
    any) and ``cfg.dtype``."""
    expected = cfg.param_shapes
    if not isinstance(specs, Mapping):
        raise ArrayTypeError(
            f"{function}: {argument} must be a dict of arrays {sorted(expected)}; got a {_kind(specs)}"
        )
    if set(specs) != set(expected):
        raise ArrayShapeError(
            f"{function}: {argument} must have the keys {sorted(expected)} (hidden = {list(cfg.hidden)}); "
            f"got {sorted(specs)}"
        )
    for name, shape in expected.items():
        spec = specs[name]
        if isinstance(spec, Spec) and spec.dtype == cfg.dtype and spec.shape in (shape, leading + shape):
            continue  # the common case, without building any message
        want = f"{cfg.dtype} {shape_text(shape)}" + (
            f" or {cfg.dtype} {shape_text(leading + shape)}" if leading else ""
        )
        if not isinstance(spec, Spec):
            raise ArrayTypeError(f"{function}: {argument}[{name!r}] must be one array {want}; got a {_kind(spec)}")
        error = ArrayTypeError if spec.dtype != cfg.dtype else ArrayShapeError
        raise error(f"{function}: {argument}[{name!r}] must be {want}; got {spec}")


def _check_alpha(function: str, spec: Any, cfg: Config) -> None:
    """α: a 0-d array, or a dict: shaped like the parameters (per_parameter), [T] each (per_layer_step)."""
    if cfg.alpha_mode == "per_layer_step":
        if not isinstance(spec, Mapping) or set(spec) != set(cfg.param_names):
            raise ArrayShapeError(
                f"{function}: alpha must be a dict with keys {sorted(cfg.param_names)} of arrays "
                f"{cfg.dtype} [{cfg.inner_steps}] (alpha_mode per_layer_step); got a {_kind(spec)}"
            )
        for name, value in spec.items():
            want = f"{cfg.dtype} [{cfg.inner_steps}] (alpha_mode per_layer_step)"
            if not isinstance(value, Spec):
                raise ArrayShapeError(f"{function}: alpha[{name!r}] must be one array {want}; got a {_kind(value)}")
            if value.dtype != cfg.dtype:
                raise ArrayTypeError(f"{function}: alpha[{name!r}] must be {want}; got {value}")
            if value.shape != (cfg.inner_steps,):
                raise ArrayShapeError(f"{function}: alpha[{name!r}] must be {want}; got {value}")
        return
    if cfg.alpha_mode == "per_parameter":
        if not isinstance(spec, Mapping):
            raise ArrayShapeError(
                f"{function}: alpha must be a dict of arrays shaped like params (alpha_mode per_parameter); "
                f"got a {_kind(spec)}"
            )
        _check_params(function, "alpha", spec, cfg)
        return
    want = f"{cfg.dtype} [] (alpha_mode {cfg.alpha_mode})"
    if not isinstance(spec, Spec):
        raise ArrayShapeError(f"{function}: alpha must be one array {want}; got a {_kind(spec)}")
    if spec.dtype != cfg.dtype:
        raise ArrayTypeError(f"{function}: alpha must be {want}; got {spec}")
    if spec.shape != ():
        raise ArrayShapeError(f"{function}: alpha must be {want}; got {spec}")


def _check_tasks(function: str, specs: Any, cfg: Config) -> None:
    """``(x_support, y_support, x_query, y_query)``: [B, K, 1] twice, [B, Q, 1] twice, ``cfg.dtype``."""
    if isinstance(specs, Spec) or not isinstance(specs, Sequence) or len(specs) != 4:
        got = (
            f"a {_kind(specs)}"
            if isinstance(specs, Spec) or not isinstance(specs, Sequence)
            else f"{len(specs)} values"
        )
        raise ArrayShapeError(f"{function}: tasks must be a tuple ({', '.join(TASK_NAMES)}) of 4 arrays; got {got}")
    for i, (name, pattern, spec) in enumerate(zip(TASK_NAMES, TASK_PATTERNS, specs, strict=True)):
        argument = f"tasks[{i}] ({name})"
        if not isinstance(spec, Spec):
            raise ArrayTypeError(f"{function}: {argument} must be one array {cfg.dtype} {pattern}; got a {_kind(spec)}")
        if spec.dtype != cfg.dtype:
            raise ArrayTypeError(f"{function}: {argument} must be {cfg.dtype} {pattern}; got {spec}")
        if len(spec.shape) != 3 or spec.shape[-1] != 1:
            raise ArrayShapeError(f"{function}: {argument} must be {cfg.dtype} {pattern}; got {spec}")
    for a, b in ((0, 1), (2, 3)):
        if specs[a].shape != specs[b].shape:
            raise ArrayShapeError(
                f"{function}: tasks[{a}] ({TASK_NAMES[a]}) and tasks[{b}] ({TASK_NAMES[b]}) must have the same "
                f"shape; got {shape_text(specs[a].shape)} and {shape_text(specs[b].shape)}"
            )
    if specs[0].shape[0] != specs[2].shape[0]:
        raise ArrayShapeError(
            f"{function}: the support and query sets must hold the same number of tasks B; "
            f"got {specs[0].shape[0]} and {specs[2].shape[0]}"
        )


def _kind(value: Any) -> str:
    if isinstance(value, Spec):
        return f"single {value} array"
    if isinstance(value, Mapping):
        return "dict"
    if isinstance(value, Sequence):
        return f"sequence of {len(value)}"
    return "non-array"
