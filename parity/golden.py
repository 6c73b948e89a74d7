"""Golden files (``.npz``) that any implementation can check itself against.

Golden file layout, version 2 (``maml-parity dump``; load with ``numpy.load(path,
allow_pickle=False)``; the full description with the comparison rule is docs/formats-golden.md):

- ``format``: ``"maml-parity-golden/2"`` (version 1 files have no ``format`` entry and still read)
- ``config``: the config as JSON text; ``framework``: who computed it; ``dtype``
- ``conventions``: text; ``init/alpha`` and ``grad/alpha`` are α and dL/dα themselves, also under
  the softplus parametrisation (a checkpoint stores ρ; a golden file never does)
- ``meta_signature``: JSON text, the config fields that change the numbers (:data:`SIGNATURE_FIELDS`)
- ``rule``: JSON text, the comparison rule (error measure, tolerances per dtype and kind)
- ``init/<name>``, ``init/alpha`` (per-parameter α: ``init/alpha/<name>``)
- ``tasks/x_support``, ``tasks/y_support`` [B, K, 1]; ``tasks/x_query``, ``tasks/y_query`` [B, Q, 1]
  (classification: images [B, N·K, C, H, W], one-hot labels [B, N·K, N]; conv weights (out, in, kh, kw))
- ``init/alpha/<name>`` under ``alpha_mode: per_layer_step`` (LSLR): [T], one α per inner step
- ``inner_losses`` [T]: meta-batch mean support loss before each inner step
- ``outer_loss`` []: meta-batch mean query loss after T steps; ``task_outer_loss`` [B]: per task
- ``grad/<name>``, ``grad/alpha`` (or ``grad/alpha/<name>``): the meta-gradient; ``grad/alpha``
  is optional under a fixed α
- optional, ``dump --trace``: ``trace/support_loss`` [B, T], ``trace/inner_grad/<name>`` and
  ``trace/adapted/<name>`` [B, T, *shape], ``trace/query_loss`` [B] (``parity.contract``'s trace);
  ``trace/state/<slot>/<name>`` [B, T, *shape], the inner optimiser's state after each step
  (:data:`STATE_SLOTS`: ``momentum``; ``m`` and ``v`` for Adam), checked when present

Any file that is not such a golden file (missing, empty, truncated, corrupt, foreign, pickled)
raises :class:`GoldenFileError`; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from parity.checkpoint import atomic_write
from parity.compare import rule_description
from parity.config import Config, ConfigError, computation_fields
from parity.contract import describe
from parity.inner import alpha_shapes as inner_alpha_shapes
from parity.safeio import read_npz_capped
from parity.twins import meta_results, step0_inputs
from parity.worker import WorkerError

TASK_KEYS = ("x_support", "y_support", "x_query", "y_query")
FORMAT = "maml-parity-golden/2"
VERSION = 2
# The config fields that change the numbers: Config.meta_signature()'s, less remat (which changes
# how the gradient is computed, not what it is). Fixed and scalar α compute the same numbers.
SIGNATURE_FIELDS = (
    "k_support",
    "k_query",
    "hidden",
    "activation",
    "loss",
    "inner_steps",
    "alpha_mode",
    "first_order",
    "dtype",
)
TEXT_ENTRIES = ("config", "framework", "dtype", "format", "conventions", "meta_signature", "rule")
CONVENTIONS = (
    "init/alpha (init/alpha/<name>) is the inner learning rate alpha itself and grad/alpha "
    "(grad/alpha/<name>) is dL/dalpha, also when the config's alpha_parametrisation is softplus "
    "(a checkpoint stores rho with alpha = softplus(rho); a golden file never does): use them as they "
    "are. Weights are (out, in): output features first; conv weights (out, in, kh, kw), images "
    "[B, N*K, C, H, W] and one-hot labels [B, N*K, N] (channels first). grad/alpha is optional when alpha_mode is "
    "fixed. Losses are means over points, then over tasks (task_outer_loss: per task). trace/* "
    "entries, when present, hold per task b and inner step t the support loss before step t, the "
    "inner gradient of step t and the parameters after it, and the query loss after the last step; "
    "trace/state/<slot>/<name> the inner optimiser's state after step t (momentum; adam: m and v)."
)


class GoldenFileError(ConfigError):
    """A golden file that is missing, unreadable or not in the format above (field ``golden``)."""

    def __init__(self, message: str, field: str = "golden"):
        super().__init__(field, message)


def golden_arrays(impl: Any, cfg: Config, trace: bool = False) -> dict[str, np.ndarray]:
    """Everything a golden file holds, computed by ``impl`` (any implementation of the contract)
    at the shared initial parameters on the sampler's step-0 meta-batch.

    ``task_outer_loss`` comes from the implementation's ``trace`` capability (left out when it
    has none); ``trace``: the trace's entries too (an implementation without one is refused).
    """
    traces = callable(getattr(impl, "trace", None))
    if trace and not traces:
        raise ConfigError("trace", f"{describe(impl)} has no trace capability (see parity.contract)")
    params, alpha, tasks = step0_inputs(cfg)
    arrays: dict[str, np.ndarray] = {
        "format": np.asarray(FORMAT),
        "config": np.asarray(cfg.to_json()),
        "framework": np.asarray(getattr(impl, "framework", impl.name)),
        "dtype": np.asarray(cfg.dtype),
        "conventions": np.asarray(CONVENTIONS),
        "meta_signature": np.asarray(json.dumps(meta_signature(cfg), sort_keys=True)),
        "rule": np.asarray(json.dumps(comparison_rule(), indent=1)),
    }
    arrays.update({f"init/{k}": v for k, v in params.items()})
    arrays.update(flat("init/alpha", alpha))
    arrays.update({f"tasks/{k}": v for k, v in zip(TASK_KEYS, tasks, strict=True)})
    try:
        arrays.update(meta_results(impl, cfg, params, alpha, tasks))
        if traces:
            recorded = {k: np.asarray(v) for k, v in impl.trace(params, alpha, tasks, cfg).items()}
            arrays["task_outer_loss"] = recorded["trace/query_loss"]
            if trace:
                arrays.update(recorded)
    except ConfigError:
        raise
    except Exception as err:  # the implementation's failure (in a worker or not): one line, nothing written
        what = str(err) if isinstance(err, WorkerError) else f"raised {type(err).__name__}: {err}"
        raise ConfigError("framework", f"{describe(impl)} {what}; nothing written") from None
    check_finite(arrays, describe(impl))
    return arrays


def check_finite(arrays: dict[str, np.ndarray], who: str) -> None:
    """A golden file holds finite numbers only: a NaN or infinity is refused, naming the entries."""
    bad = [k for k, v in arrays.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise ConfigError("framework", f"{who} returned results that are not all finite ({shown}); nothing written")


def signature_fields(cfg: Config) -> tuple[str, ...]:
    """The fields of ``cfg`` that change the numbers: those of :data:`SIGNATURE_FIELDS` it has, then
    every other computation field (``parity.config.computation_fields``, remat aside) that the
    default config lacks or holds at another value: a 0.2 file's signature reads unchanged, and a
    conv or Adam config's names its model and optimiser fields."""
    values, default = cfg.flat(), Config().flat()
    kept = [f for f in SIGNATURE_FIELDS if f in values]
    extra = [
        f
        for f in computation_fields(cfg)
        if f not in SIGNATURE_FIELDS and f != "remat" and (f not in default or default[f] != values[f])
    ]
    return (*kept, *extra)


def meta_signature(cfg: Config) -> dict[str, Any]:
    """The config's values of the fields that change the numbers (:func:`signature_fields`)."""
    values = cfg.flat()
    return {field: values[field] for field in signature_fields(cfg)}


def signature_differences(a: Config, b: Config) -> list[tuple[str, Any, Any]]:
    """``(field, a's value, b's value)`` for each field that changes the numbers and differs
    (fixed and scalar α count as the same: they compute the same numbers); a field one lacks: None."""
    sig_a, sig_b = a.meta_signature().flat(), b.meta_signature().flat()
    values_a, values_b = a.flat(), b.flat()
    fields = dict.fromkeys([*signature_fields(a), *signature_fields(b)])
    return [(f, values_a.get(f), values_b.get(f)) for f in fields if sig_a.get(f) != sig_b.get(f)]


def comparison_rule() -> dict[str, Any]:
    """How two golden files (or an implementation and a golden file) are compared: the ``rule``
    entry. The measure, tolerances and kinds are :mod:`parity.compare`'s one rule, as data."""
    return {
        **rule_description(),
        "inputs": "init/* and tasks/* are inputs: they must be identical, else the files describe different problems",
        "optional": ["grad/alpha (grad/alpha/<name>) when alpha_mode is fixed", "task_outer_loss", "trace/*"],
    }


def flat(prefix: str, tree: Any) -> dict[str, np.ndarray]:
    """``{prefix/name: leaf}`` for a dict, ``{prefix: leaf}`` for one array."""
    if isinstance(tree, dict):
        return {f"{prefix}/{k}": np.asarray(v) for k, v in tree.items()}
    return {prefix: np.asarray(tree)}


def write_golden(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> Path:
    """Write atomically: a temporary file in the same folder, flushed, then renamed over ``path``."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError("out", f"a golden file must end in .npz, got {str(path)!r}")
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]  # numpy stubs: a key could be "allow_pickle"
    return path


def read_golden(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a golden file without unpickling anything; ``config`` comes back as a :class:`Config`.

    Every entry the config implies must be there with its shape and dtype; anything else about the
    file (missing, empty, truncated, corrupt zip entries, a foreign .npz) is a :class:`GoldenFileError`.
    """
    arrays = read_golden_arrays(path)
    if "config" not in arrays:
        raise GoldenFileError(f"{path}: no 'config' entry; not a maml-parity golden file")
    version = golden_version(path, arrays)
    try:
        cfg = Config.from_json(str(arrays["config"]))
    except ConfigError as err:
        raise GoldenFileError(f"{path}: the 'config' entry is not a valid config ({err})") from None
    check_golden_layout(path, arrays, cfg, version)
    out: dict[str, Any] = dict(arrays)
    out["config"] = cfg
    return out


def read_golden_arrays(
    path: str | os.PathLike[str], allowed: Callable[[str], bool] | None = None
) -> dict[str, np.ndarray]:
    """A golden file's arrays, unchecked against any config: the one reader of golden files (``diff``,
    ``check --golden``, the pytest plugin's ``maml_parity_golden``). A regular file only (a FIFO is
    refused, not waited on), entries checked by name (``allowed``, default :func:`is_golden_key`),
    dtype and declared size (at most :data:`MAX_GOLDEN_BYTES`) before any is inflated, nothing
    unpickled; anything else is a :class:`GoldenFileError` naming the file."""
    return read_npz_capped(path, allowed or is_golden_key, MAX_GOLDEN_BYTES, GoldenFileError, "golden file")


# The largest golden file read: the seed-sized ones are kilobytes; a 1→1024→1024→1 net with a
# per-task trace of 100 steps for 64 tasks is still well under this.
MAX_GOLDEN_BYTES = 1 << 30
_GOLDEN_PREFIXES = ("init/", "grad/", "tasks/", "trace/")


def is_golden_key(key: str) -> bool:
    """An entry name a golden file (v1 or v2) may hold."""
    return key in (*TEXT_ENTRIES, "inner_losses", "outer_loss", "task_outer_loss") or key.startswith(_GOLDEN_PREFIXES)


def golden_version(path: Any, arrays: dict[str, np.ndarray]) -> int:
    """1 for a file without a ``format`` entry, 2 for ``maml-parity-golden/2``; anything else is refused."""
    if "format" not in arrays:
        return 1
    tag = arrays["format"]
    if tag.shape != () or tag.dtype.kind != "U":
        raise GoldenFileError(f"{path}: entry 'format' must be text; got {tag.dtype}{list(tag.shape)}")
    if str(tag) != FORMAT:
        raise GoldenFileError(f"{path}: format {str(tag)[:60]!r} is not one this version reads ({FORMAT!r} or none)")
    return VERSION


def golden_layout(cfg: Config) -> dict[str, tuple[tuple[int, ...], str | None]]:
    """Every array a golden file of ``cfg`` must hold: name → (shape, dtype; None for text entries)."""
    B, T = cfg.meta_batch, cfg.inner_steps
    K, Q = cfg.family.task_points()
    x_shape, y_shape = tuple(cfg.family.input_shape), (cfg.family.n_outputs,)
    layout: dict[str, tuple[tuple[int, ...], str | None]] = {"config": ((), None), "framework": ((), None)}
    layout["dtype"] = ((), None)
    alpha_shapes = inner_alpha_shapes(cfg)
    for group in ("init", "grad"):
        layout.update({f"{group}/{k}": (s, cfg.dtype) for k, s in cfg.param_shapes.items()})
        if alpha_shapes is None:
            layout[f"{group}/alpha"] = ((), cfg.dtype)
        else:
            layout.update({f"{group}/alpha/{k}": (s, cfg.dtype) for k, s in alpha_shapes.items()})
    for key, P, shape in zip(TASK_KEYS, (K, K, Q, Q), (x_shape, y_shape) * 2, strict=True):
        layout[f"tasks/{key}"] = ((B, P, *shape), cfg.dtype)
    layout["inner_losses"] = ((T,), cfg.dtype)
    layout["outer_loss"] = ((), cfg.dtype)
    return layout


def optional_layout(cfg: Config) -> dict[str, tuple[tuple[int, ...], str | None]]:
    """The entries a golden file may hold, checked when present (see the module docstring)."""
    layout: dict[str, tuple[tuple[int, ...], str | None]] = {k: ((), None) for k in TEXT_ENTRIES}
    layout["task_outer_loss"] = ((cfg.meta_batch,), cfg.dtype)
    layout.update(trace_layout(cfg))
    # the model's layer outputs (conv blocks) on the support set before each step: optional within a
    # trace (an implementation may record none), checked when present
    B, T, P = cfg.meta_batch, cfg.inner_steps, cfg.family.task_points()[0]  # type: ignore[attr-defined]
    layout.update({f"trace/activation/{k}": ((B, T, P, *s), cfg.dtype) for k, s in cfg.traced_layers.items()})
    return layout


def trace_layout(cfg: Config) -> dict[str, tuple[tuple[int, ...], str | None]]:
    """A trace's entries (``parity.contract``): all of them or none."""
    B, T = cfg.meta_batch, cfg.inner_steps
    layout: dict[str, tuple[tuple[int, ...], str | None]] = {"trace/support_loss": ((B, T), cfg.dtype)}
    for group in ("inner_grad", "adapted"):
        layout.update({f"trace/{group}/{k}": ((B, T, *s), cfg.dtype) for k, s in cfg.param_shapes.items()})
    layout["trace/query_loss"] = ((B,), cfg.dtype)
    return layout


# The inner optimisers' state slots, as every implementation's trace names them
# (``trace/state/<slot>/<name>``): the momentum buffer, Adam's first and second moments.
STATE_SLOTS: dict[str, tuple[str, ...]] = {"sgd": (), "momentum": ("momentum",), "adam": ("m", "v")}


def state_layout(path: Any, arrays: dict[str, np.ndarray], cfg: Config) -> dict[str, tuple[tuple[int, ...], str]]:
    """The ``trace/state/<slot>/<name>`` entries a file holds, each [B, T, *shape]; for a built-in
    inner optimiser all of its slots or none (another optimiser's slots are refused: a momentum
    buffer in an Adam file is a mislabelled file). A user's optimiser: any slot, shape-checked."""
    B, T = cfg.meta_batch, cfg.inner_steps
    held = sorted(k for k in arrays if k.startswith("trace/state/"))
    layout: dict[str, tuple[tuple[int, ...], str]] = {}
    for key in held:
        name = key[len("trace/state/") :].partition("/")[2]
        if name not in cfg.param_shapes:
            raise GoldenFileError(
                f"{path}: entry {key!r} names no parameter of its config ({', '.join(cfg.param_shapes)})"
            )
        layout[key] = ((B, T, *cfg.param_shapes[name]), cfg.dtype)
    slots = STATE_SLOTS.get(cfg.inner_optimizer)
    if held and slots is not None:
        expected = {f"trace/state/{s}/{n}" for s in slots for n in cfg.param_shapes}
        if set(held) != expected:
            extra = sorted(set(held) - expected)
            what = f"unexpected {extra[:3]}" if extra else f"missing {sorted(expected - set(held))[:3]}"
            raise GoldenFileError(
                f"{path}: trace/state entries do not match inner_optimizer {cfg.inner_optimizer} (slots: "
                f"{', '.join(slots) or 'none'}; all of them or none): {what}"
            )
    return layout


def check_golden_layout(path: Any, arrays: dict[str, np.ndarray], cfg: Config, version: int = VERSION) -> None:
    layout = golden_layout(cfg)
    if cfg.alpha_mode == "fixed":  # dL/dα under a fixed α is optional
        layout.pop("grad/alpha")
    if version >= 2:
        layout["format"] = ((), None)
    missing = sorted(set(layout) - set(arrays))
    if missing:
        raise GoldenFileError(f"{path}: entries missing for its config: {missing}")
    traced = [k for k in trace_layout(cfg) if k in arrays]
    if traced and len(traced) < len(trace_layout(cfg)):
        absent = sorted(set(trace_layout(cfg)) - set(traced))
        raise GoldenFileError(f"{path}: trace entries incomplete (a trace holds all or none); missing {absent}")
    if cfg.alpha_mode == "fixed" and "grad/alpha" in arrays:
        layout["grad/alpha"] = ((), cfg.dtype)
    layout.update({k: v for k, v in optional_layout(cfg).items() if k in arrays and k not in layout})
    layout.update(state_layout(path, arrays, cfg))
    for name, (shape, dtype) in layout.items():
        got = arrays[name]
        if dtype is None:
            if got.shape != () or got.dtype.kind != "U":
                raise GoldenFileError(f"{path}: entry {name!r} must be text; got {got.dtype}{list(got.shape)}")
        elif got.shape != shape or got.dtype != np.dtype(dtype):
            raise GoldenFileError(
                f"{path}: entry {name!r} is {got.dtype}{list(got.shape)}, its config needs {dtype}{list(shape)}"
            )
    if "meta_signature" in arrays:
        try:
            written = json.loads(str(arrays["meta_signature"]))
        except ValueError:
            raise GoldenFileError(f"{path}: entry 'meta_signature' is not JSON") from None
        if written != json.loads(json.dumps(meta_signature(cfg))):
            raise GoldenFileError(
                f"{path}: entry 'meta_signature' disagrees with the config ({str(arrays['meta_signature'])[:120]})"
            )
