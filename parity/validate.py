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


def shape_text(shape: Sequence[Any]) -> str:
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

    ``cfg`` None (``forward``): ``x`` must be [..., P, 1] (MLP) or [..., P, C, H, W] (a conv's
    4-d ``w0``) of the parameters' float dtype. Otherwise ``x`` is [..., P, *input_shape] and ``y``
    [..., P, n_outputs] of ``cfg``'s family (the sinusoid's: [..., P, 1] both).
    ``batched_params``: the parameters may carry the leading task axes of ``x`` (``inner_loss``).
    """
    if cfg is None:
        _check_forward(function, params, x)
        return
    inputs, outputs = cfg.family.input_shape, (cfg.family.n_outputs,)
    if tasks is not None:
        _check_tasks(function, tasks, cfg)
    if x is not None:
        _check_points(function, "x", x, cfg.dtype, inputs)
    if y is not None:
        _check_points(function, "y", y, cfg.dtype, outputs)
        if x is not None and x.shape[: -len(inputs)] != y.shape[:-1]:
            raise ArrayShapeError(f"{function}: x and y must hold the same points [..., P]; got {x} and {y}")
    if params is not None:
        leading = x.shape[: -1 - len(inputs)] if batched_params and isinstance(x, Spec) else ()
        _check_params(function, "params", params, cfg, leading)
    if alpha is not None:
        _check_alpha(function, alpha, cfg)


def _check_forward(function: str, params: Any, x: Any) -> None:
    if not isinstance(params, Mapping) or "w0" not in params or not isinstance(params["w0"], Spec):
        raise ArrayTypeError(f"{function}: params must be a dict of arrays with keys w0, b0, w1, ...")
    w0 = params["w0"]
    if w0.dtype not in FLOAT_DTYPES:
        raise ArrayTypeError(f"{function}: params['w0'] must be float32 or float64; got {w0}")
    # A conv's first weight (out, in, 3, 3) says the channels; the image side is the model's to check.
    point = (w0.shape[-3], "H", "W") if len(w0.shape) == 4 else (1,)
    _check_points(function, "x", x, w0.dtype, point)


def _check_points(function: str, argument: str, spec: Any, dtype: str, point: tuple[Any, ...] = (1,)) -> None:
    """Points ``x`` or ``y`` [..., P, *point] of ``dtype`` (a str entry of ``point``: any size)."""
    pattern = shape_text(("...", "P", *point))
    if not isinstance(spec, Spec):
        raise ArrayTypeError(f"{function}: {argument} must be one array {dtype} {pattern}; got a {_kind(spec)}")
    if spec.dtype != dtype:
        raise ArrayTypeError(f"{function}: {argument} must be {dtype} {pattern}; got {spec}")
    if not _fits(spec.shape, point, len(point) + 1):
        raise ArrayShapeError(f"{function}: {argument} must be {dtype} {pattern}; got {spec}")


def _fits(shape: tuple[int, ...], point: tuple[Any, ...], minimum_rank: int) -> bool:
    """``shape`` has at least ``minimum_rank`` axes and ends in ``point`` (a str entry: any size)."""
    if len(shape) < minimum_rank:
        return False
    tail = shape[len(shape) - len(point) :]
    return all(isinstance(want, str) or got == want for got, want in zip(tail, point, strict=True))


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
    """α: a 0-d array, or (per_parameter mode) a dict shaped like the parameters."""
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


def task_patterns(cfg: Config) -> tuple[tuple[Any, ...], ...]:
    """The four task arrays' shapes as patterns (a str entry: any size), from ``cfg``'s family:
    [B, K, 1] (x and y) for sinusoids, [B, N·K, C, H, W] and [B, N·K, N] for classification."""
    family = cfg.family
    support, query = ("N·K", "N·Q") if hasattr(family, "n_way") else ("K", "Q")
    x, y = tuple(family.input_shape), (family.n_outputs,)
    return (("B", support, *x), ("B", support, *y), ("B", query, *x), ("B", query, *y))


def _check_tasks(function: str, specs: Any, cfg: Config) -> None:
    """``(x_support, y_support, x_query, y_query)`` of ``cfg.dtype``, shaped by :func:`task_patterns`."""
    if isinstance(specs, Spec) or not isinstance(specs, Sequence) or len(specs) != 4:
        got = (
            f"a {_kind(specs)}"
            if isinstance(specs, Spec) or not isinstance(specs, Sequence)
            else f"{len(specs)} values"
        )
        raise ArrayShapeError(f"{function}: tasks must be a tuple ({', '.join(TASK_NAMES)}) of 4 arrays; got {got}")
    for i, (name, point, spec) in enumerate(zip(TASK_NAMES, task_patterns(cfg), specs, strict=True)):
        argument, pattern = f"tasks[{i}] ({name})", shape_text(point)
        if not isinstance(spec, Spec):
            raise ArrayTypeError(f"{function}: {argument} must be one array {cfg.dtype} {pattern}; got a {_kind(spec)}")
        if spec.dtype != cfg.dtype:
            raise ArrayTypeError(f"{function}: {argument} must be {cfg.dtype} {pattern}; got {spec}")
        if len(spec.shape) != len(point) or not _fits(spec.shape, point[2:], len(point)):
            raise ArrayShapeError(f"{function}: {argument} must be {cfg.dtype} {pattern}; got {spec}")
    # x and y hold the same [B, P] points (the trailing axes were checked above); where their
    # patterns are equal (sinusoids), that is the same shape.
    same = "shape" if task_patterns(cfg)[0] == task_patterns(cfg)[1] else "leading axes [B, P]"
    for a, b in ((0, 1), (2, 3)):
        if specs[a].shape[:2] != specs[b].shape[:2]:
            raise ArrayShapeError(
                f"{function}: tasks[{a}] ({TASK_NAMES[a]}) and tasks[{b}] ({TASK_NAMES[b]}) must have the same "
                f"{same}; got {shape_text(specs[a].shape)} and {shape_text(specs[b].shape)}"
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
