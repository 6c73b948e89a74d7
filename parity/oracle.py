"""``numpy``: a framework-free oracle implementing the contract (``parity.contract``).

It shares no code with the twins. The inner gradient is written out by hand (backpropagation
through the MLP); the outer gradient comes from complex-step differentiation,
``f'(x)·v = Im f(x + i·h·v) / h`` with ``h = 1e-30``: no subtraction, so it is exact to
rounding, one direction per basis vector of each parameter. Every non-analytic piece stays
complex-step-safe: ``|z|`` is ``z·sign(Re z)`` and ``relu(z)`` is ``z·[Re z > 0]``. First order
(FOMAML) holds each inner gradient constant by computing it from the real parts alone, so the
perturbation flows only through ``w − α·g``.

Parameters are dicts ``{name: [D, *shape]}`` (complex) whose leading D axis holds the perturbed
copies. A model is an entry of :data:`MODEL_GRADS`, ``(forward, loss_and_grads)`` written by hand;
the pieces (activation, its derivative, the loss and its gradient, the inner gradient, the update)
are methods of :class:`NumpyOracle`, so that a test can plant a bug in exactly one of them by
subclassing, and the optional ``trace`` capability records the same loop the gradient runs.

Float64 only (complex128 inside): it is the reference that both twins' float64 results, and
their float32 results, are held to. It does not train (no trajectories).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from parity import oracle_conv
from parity.config import Config, lookup
from parity.contract import MetaResult
from parity.inner import msl_weights

H = 1e-30  # complex step

# Activations as (value, derivative), complex-step safe: relu(z) = z·[Re z > 0].
ACTIVATIONS = {
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "relu": (lambda z: z * (z.real > 0), lambda z: (z.real > 0).astype(float)),
}


def _l1(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.sign(r.real)  # |z| = z·sign(Re z): complex-step safe
    return r * s, s


# Per-point loss of the residual r and its derivative with respect to r.
POINT_LOSSES = {"l1": _l1, "mse": lambda r: (r * r, 2.0 * r)}

# Every array below carries a leading D axis (perturbed copies): parameters are ``{name: [D, *shape]}``
# complex, inputs ``x`` [P, ...] shared by every copy or [D, P, ...] one set per copy.
Params = dict[str, np.ndarray]


def mlp_forward(oracle: NumpyOracle, params: Params, x: np.ndarray, cfg: Config) -> np.ndarray:
    """The MLP on points ``x`` [P, n_in] or [D, P, n_in] → out [D, P, n_out]."""
    return _mlp_layers(oracle, params, x, cfg)[0]


def mlp_loss_and_grads(
    oracle: NumpyOracle, params: Params, x: np.ndarray, y: np.ndarray, cfg: Config
) -> tuple[np.ndarray, Params]:
    """The loss [D] on ``x``, ``y`` and its gradient ``{name: [D, *shape]}`` by hand-written backprop."""
    out, inputs, pre = _mlp_layers(oracle, params, x, cfg)
    value, g = oracle.loss_and_grad_out(out, y, cfg.loss)
    grads: Params = {}
    for i in reversed(range(len(inputs))):
        grads[f"w{i}"] = np.einsum("dpo,dpi->doi", g, inputs[i])
        grads[f"b{i}"] = g.sum(axis=1)
        if i > 0:
            g = np.einsum("dpo,doi->dpi", g, params[f"w{i}"]) * oracle.act_grad(pre[i - 1], cfg.activation)
    return value, {name: grads[name] for name in params}


def _mlp_layers(oracle: NumpyOracle, params: Params, x: np.ndarray, cfg: Config) -> tuple[np.ndarray, list, list]:
    # (out, each layer's input, each layer's pre-activation): what the backward pass reuses
    n = len(params) // 2
    h = np.broadcast_to(x, (params["w0"].shape[0], *x.shape[-2:])).astype(complex)
    inputs, pre = [], []
    for i in range(n):
        inputs.append(h)
        z = np.einsum("dpi,doi->dpo", h, params[f"w{i}"]) + params[f"b{i}"][:, None, :]
        pre.append(z)
        h = oracle.act(z, cfg.activation) if i < n - 1 else z
    return h, inputs, pre


# The models this oracle implements: name → (forward, loss_and_grads), both taking the oracle first
# (so that a subclass's act / act_grad / loss_and_grad_out reach them). Another module adds an entry.
ModelGrads = tuple[Callable[..., np.ndarray], Callable[..., tuple[np.ndarray, Params]]]
MODEL_GRADS: dict[str, ModelGrads] = {
    "mlp": (mlp_forward, mlp_loss_and_grads),
    "conv": (oracle_conv.conv_forward, oracle_conv.conv_loss_and_grads),
}
# The models whose layer outputs the trace records (``Config.traced_layers``): name → layers(params, x, model).
MODEL_LAYERS: dict[str, Callable[..., dict[str, np.ndarray]]] = {"conv": oracle_conv.layers}
# Losses of the whole output rather than of a residual: (out, y) -> (value [D], gradient wrt out).
OUTPUT_LOSSES = {"cross_entropy": oracle_conv.cross_entropy}

# The inner optimisers, as the twins' tables: init(params) -> state {slot: {name: [D, *shape]}};
# update(grads, state, t, opt) -> (direction u, new state), t = 1, 2, …; the step is w − α ⊙ u.
OptState = dict[str, Params]


def _sgd(grads: Params, state: OptState, t: int, opt: Any) -> tuple[Params, OptState]:
    return grads, state


def _momentum(grads: Params, state: OptState, t: int, opt: Any) -> tuple[Params, OptState]:
    # torch.optim.SGD with dampening 0: v ← β·v + g; heavy ball u = v, Nesterov u = g + β·v
    buf = {k: opt.momentum * state["momentum"][k] + g for k, g in grads.items()}
    return ({k: g + opt.momentum * buf[k] for k, g in grads.items()} if opt.nesterov else buf), {"momentum": buf}


def _adam(grads: Params, state: OptState, t: int, opt: Any) -> tuple[Params, OptState]:
    # optax.adam / torch.optim.Adam: m̂ / (√v̂ + ε), ε outside the root
    m = {k: opt.beta1 * state["m"][k] + (1 - opt.beta1) * g for k, g in grads.items()}
    v = {k: opt.beta2 * state["v"][k] + (1 - opt.beta2) * g * g for k, g in grads.items()}
    c1, c2 = 1 - opt.beta1**t, 1 - opt.beta2**t
    return {k: (m[k] / c1) / (safe_sqrt(v[k] / c2) + opt.eps) for k in grads}, {"m": m, "v": v}


def safe_sqrt(v: np.ndarray) -> np.ndarray:
    """√v, complex-step safe: the principal root is analytic where Re v > 0; where Re v = 0, v is
    exactly 0 (every gradient so far 0, and so every perturbation of it), and √ gives 0 with no
    perturbation: the twins' derivative-0-at-0 choice (docs/numerics.md)."""
    positive = v.real > 0
    return np.where(positive, np.sqrt(np.where(positive, v, 1.0)), 0.0)


def _zeros(params: Params) -> Params:
    return {k: np.zeros_like(v) for k, v in params.items()}


INNER_OPTIMIZERS: dict[str, tuple[Callable[[Params], OptState], Callable[..., tuple[Params, OptState]]]] = {
    "sgd": (lambda params: {}, _sgd),
    "momentum": (lambda params: {"momentum": _zeros(params)}, _momentum),
    "adam": (lambda params: {"m": _zeros(params), "v": _zeros(params)}, _adam),
}


class NumpyOracle:
    """The contract in NumPy: hand-written backprop inside, complex-step differentiation outside."""

    name = "numpy"

    def supports(self, cfg: Config) -> str | None:
        if cfg.dtype != "float64":
            return "the NumPy oracle computes in float64 only (it is the float64 reference)"
        if cfg.model.name not in MODEL_GRADS:
            has = ", ".join(MODEL_GRADS)
            return f"the NumPy oracle has no model {cfg.model.name!r} (it has {has})"
        if cfg.inner_optimizer not in INNER_OPTIMIZERS:
            has = ", ".join(INNER_OPTIMIZERS)
            return f"the NumPy oracle has no inner optimiser {cfg.inner_optimizer!r} (it has {has})"
        return None

    # --- the pieces -----------------------------------------------------------------------------

    def act(self, z: np.ndarray, kind: str) -> np.ndarray:
        return lookup(ACTIVATIONS, "activation", kind)[0](z)

    def act_grad(self, z: np.ndarray, kind: str) -> np.ndarray:
        return lookup(ACTIVATIONS, "activation", kind)[1](z)

    def forward(self, params: Params, x: np.ndarray, cfg: Config) -> np.ndarray:
        """The model (``cfg.model``) on ``x`` → out [D, P, n_out]."""
        return lookup(MODEL_GRADS, "model", cfg.model.name)[0](self, params, x, cfg)

    def loss_and_grad_out(self, out: np.ndarray, y: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean loss over P points [D] and its gradient with respect to ``out`` [D, P, n_out]."""
        if kind in OUTPUT_LOSSES:
            return OUTPUT_LOSSES[kind](out, y)
        r = out - y
        value, grad = lookup(POINT_LOSSES, "loss", kind)(r)
        P = r.shape[1]
        return np.sum(value, axis=tuple(range(1, r.ndim))) / P, grad / P

    def loss_and_grads(self, params: Params, x: np.ndarray, y: np.ndarray, cfg: Config) -> tuple[np.ndarray, Params]:
        """The loss [D] and its gradient ``{name: [D, *shape]}`` (the model's hand-written backprop)."""
        return lookup(MODEL_GRADS, "model", cfg.model.name)[1](self, params, x, y, cfg)

    def inner_gradient(self, params: Params, x: np.ndarray, y: np.ndarray, cfg: Config) -> tuple[np.ndarray, Params]:
        """The support loss [D] and the inner gradient; first order: the gradient is a constant."""
        if cfg.first_order:  # computed from the real parts: no perturbation flows through it
            _, grads = self.loss_and_grads({k: v.real for k, v in params.items()}, x, y, cfg)
            return self.loss_and_grads(params, x, y, cfg)[0], grads
        return self.loss_and_grads(params, x, y, cfg)

    def inner_direction(self, grads: Params, state: OptState, t: int, cfg: Config) -> tuple[Params, OptState]:
        """The inner optimiser's step t (1, 2, …): (direction u, new state) from the gradient."""
        return lookup(INNER_OPTIMIZERS, "inner_optimizer", cfg.inner_optimizer)[1](grads, state, t, cfg.inner.optimizer)

    def inner_update(self, w: np.ndarray, a: np.ndarray, g: np.ndarray) -> np.ndarray:
        """One inner step of one parameter along the direction ``g``: ``w − α·g``."""
        return w - a * g

    # --- the objective --------------------------------------------------------------------------

    def inner_loop(
        self, params: Params, alpha: Any, x: np.ndarray, y: np.ndarray, cfg: Config, record: dict | None = None
    ) -> tuple[Params, np.ndarray]:
        """T inner steps of one task: (adapted parameters, support losses [D, T]). Only
        ``cfg.model.adapted(names)`` move; the others keep their value. ``record`` receives the
        per-step lists ``support_loss``, ``inner_grad``, ``state`` and ``adapted`` (dicts) of the trace."""
        adapted = set(cfg.model.adapted(tuple(params)))
        state = lookup(INNER_OPTIMIZERS, "inner_optimizer", cfg.inner_optimizer)[0](params)
        losses: list[np.ndarray] = []
        for t in range(1, cfg.inner_steps + 1):
            value, grads = self.inner_gradient(params, x, y, cfg)
            direction, state = self.inner_direction(grads, state, t, cfg)
            params = {
                k: self.inner_update(v, _step_size(alpha, k, v, t, cfg), direction[k]) if k in adapted else v
                for k, v in params.items()
            }
            losses.append(value)
            if record is not None:
                record["support_loss"].append(value)
                record["inner_grad"].append(grads)
                record["state"].append(state)
                record["adapted"].append(params)
        D = next(iter(params.values())).shape[0]
        return params, np.stack(losses, axis=-1) if losses else np.zeros((D, 0))

    def meta_loss(
        self, params: Params, alpha: Any, tasks: tuple, cfg: Config, record: list | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean outer loss [D] and mean support losses [D, T]; every leaf carries a leading D axis.

        ``record``: a list that receives, per task, ``{"support_loss": [T × D], "inner_grad":
        [T × Params], "adapted": [T × Params], "query_loss": D}`` (the trace).
        """
        x_s, y_s, x_q, y_q = tasks
        outer, inner = [], []
        for task in range(x_s.shape[0]):
            steps: dict[str, list] = {"support_loss": [], "inner_grad": [], "state": [], "adapted": []}
            adapted, losses = self.inner_loop(params, alpha, x_s[task], y_s[task], cfg, steps)
            query = self.query_loss(adapted, steps["adapted"], x_q[task], y_q[task], cfg)
            outer.append(query)
            inner.append(losses)
            if record is not None:
                record.append({**steps, "query_loss": query})
        return np.mean(outer, axis=0), np.mean(inner, axis=0)

    def query_loss(
        self, adapted: Params, per_step: list[Params], x: np.ndarray, y: np.ndarray, cfg: Config
    ) -> np.ndarray:
        """One task's outer loss [D]: L_query of the adapted parameters, or (``cfg.msl``, MAML++'s
        multi-step loss) Σ_t w_t·L_query(θ_t) over the parameters after each step, with the weights
        of outer step 0 (``parity.inner.msl_weights``: the contract's call)."""
        if not cfg.msl:
            return self.loss_and_grad_out(self.forward(adapted, x, cfg), y, cfg.loss)[0]
        losses = [self.loss_and_grad_out(self.forward(p, x, cfg), y, cfg.loss)[0] for p in per_step]
        return np.sum([w * loss for w, loss in zip(msl_weights(cfg.inner, 0), losses, strict=True)], axis=0)

    # --- the contract ---------------------------------------------------------------------------

    def meta_value_and_grad(
        self, params: dict[str, np.ndarray], alpha: Any, tasks: tuple[np.ndarray, ...], cfg: Config
    ) -> MetaResult:
        params, alpha, tasks = _float64(params, alpha, tasks)
        per_parameter = isinstance(alpha, dict)
        names = list(params)

        def along(tree: Any, D: int, name: str | None, basis: np.ndarray | None) -> Any:
            # D copies of tree, entry `name` perturbed by i·h along each basis vector
            if isinstance(tree, dict):
                return {
                    k: (
                        np.broadcast_to(v, (D, *v.shape)) + (1j * H * basis if k == name and basis is not None else 0)
                    ).astype(complex)
                    for k, v in tree.items()
                }
            return np.broadcast_to(tree, (D,)).astype(complex)

        outer, inner = self.meta_loss(_one(params), _one(alpha), tasks, cfg)
        grads: dict[str, np.ndarray] = {}
        for k in names:
            basis = _basis(params[k].shape)
            D = basis.shape[0]
            value = self.meta_loss(along(params, D, k, basis), along(alpha, D, None, None), tasks, cfg)[0]
            grads[k] = (value.imag / H).reshape(params[k].shape)
        alpha_grad: Any
        if per_parameter:
            alpha_grad = {}
            for k in names:
                basis = _basis(alpha[k].shape)
                D = basis.shape[0]
                value = self.meta_loss(along(params, D, None, None), along(alpha, D, k, basis), tasks, cfg)[0]
                alpha_grad[k] = (value.imag / H).reshape(alpha[k].shape)
        else:
            alpha_grad = np.asarray(self.meta_loss(_one(params), _one(alpha) + 1j * H, tasks, cfg)[0].imag[0] / H)
        return {
            "outer_loss": np.asarray(outer[0].real),
            "inner_losses": np.asarray(inner[0].real),
            "grads": grads,
            "alpha_grad": alpha_grad,
        }

    def trace(
        self, params: dict[str, np.ndarray], alpha: Any, tasks: tuple[np.ndarray, ...], cfg: Config
    ) -> dict[str, np.ndarray]:
        """Per task b and inner step t, the loop ``meta_value_and_grad`` runs (see ``parity.contract``):
        ``trace/support_loss`` [B, T], ``trace/inner_grad/<name>`` and ``trace/adapted/<name>``
        [B, T, *shape], ``trace/query_loss`` [B]."""
        params, alpha, tasks = _float64(params, alpha, tasks)
        record: list[dict[str, Any]] = []
        self.meta_loss(_one(params), _one(alpha), tasks, cfg, record)
        B, T = tasks[0].shape[0], cfg.inner_steps
        out: dict[str, np.ndarray] = {
            "trace/support_loss": np.array([[v[0].real for v in r["support_loss"]] for r in record]).reshape(B, T),
            "trace/query_loss": np.array([r["query_loss"][0].real for r in record]),
        }
        slots = list(INNER_OPTIMIZERS[cfg.inner_optimizer][0](params))
        groups = [("inner_grad", [r["inner_grad"] for r in record]), ("adapted", [r["adapted"] for r in record])]
        groups += [(f"state/{slot}", [[s[slot] for s in r["state"]] for r in record]) for slot in slots]
        for group, per_task in groups:
            for k, v in params.items():
                steps = [[step[k][0].real for step in task] for task in per_task]
                out[f"trace/{group}/{k}"] = np.array(steps, dtype=np.float64).reshape(B, T, *v.shape)
        out.update(self._traced_layers(params, tasks[0], record, cfg))
        return out

    def _traced_layers(
        self, params: Params, x_support: np.ndarray, record: list[dict[str, Any]], cfg: Config
    ) -> dict[str, np.ndarray]:
        """``trace/activation/<layer>`` [B, T, P, *shape]: the model's layers on the support set with
        the parameters before each inner step (the initial ones, then each step's adapted ones)."""
        layers = MODEL_LAYERS.get(cfg.model.name)
        if layers is None or not cfg.traced_layers:
            return {}
        B, T, P = x_support.shape[0], cfg.inner_steps, x_support.shape[1]
        per_step: dict[str, list[list[np.ndarray]]] = {name: [] for name in cfg.traced_layers}
        for b in range(B):
            before = [_one(params), *record[b]["adapted"][: T - 1]] if T else []
            outputs = [layers(p, x_support[b], cfg.model) for p in before]
            for name in per_step:
                per_step[name].append([o[name][0].real for o in outputs])
        return {
            f"trace/activation/{name}": np.array(steps, dtype=np.float64).reshape(B, T, P, *cfg.traced_layers[name])
            for name, steps in per_step.items()
        }

    def softplus_variable_grad(self, params: dict[str, np.ndarray], rho: Any, tasks: tuple, cfg: Config) -> Any:
        """dL/dρ where α = softplus(ρ) (``alpha_parametrisation`` softplus): 0-d, or one array per
        parameter; the complex step goes through the softplus itself, ``log(1 + e^ρ)``."""
        params, rho, tasks = _float64(params, rho, tasks)

        def softplus(r: np.ndarray) -> np.ndarray:
            return np.log1p(np.exp(r))  # analytic: complex-step safe

        if not isinstance(rho, dict):
            value = self.meta_loss(_one(params), softplus(_one(rho) + 1j * H), tasks, cfg)[0]
            return np.asarray(value.imag[0] / H)
        out = {}
        for k in rho:
            basis = _basis(rho[k].shape)
            D = basis.shape[0]
            moved = {
                n: softplus(np.broadcast_to(v, (D, *v.shape)) + (1j * H * basis if n == k else 0))
                for n, v in rho.items()
            }
            fixed = {n: np.broadcast_to(v, (D, *v.shape)).astype(complex) for n, v in params.items()}
            out[k] = (self.meta_loss(fixed, moved, tasks, cfg)[0].imag / H).reshape(rho[k].shape)
        return out


def golden_results(golden: dict[str, Any]) -> dict[str, np.ndarray]:
    """Recompute a golden file's ``outer_loss``, ``inner_losses`` and every ``grad/...`` entry from
    its config, initial parameters, α and tasks alone (``parity.golden.read_golden``'s dict), flat."""
    cfg = golden["config"]
    names = [k.split("/", 1)[1] for k in golden if k.startswith("init/") and not k.startswith("init/alpha")]
    params = {k: golden[f"init/{k}"] for k in names}
    alpha: Any = {k: golden[f"init/alpha/{k}"] for k in names} if "init/alpha" not in golden else golden["init/alpha"]
    tasks = tuple(golden[f"tasks/{k}"] for k in ("x_support", "y_support", "x_query", "y_query"))
    return flat(NumpyOracle().meta_value_and_grad(params, alpha, tasks, cfg))


def flat(result: Any) -> dict[str, np.ndarray]:
    """A contract result under a golden file's names: ``outer_loss``, ``inner_losses``,
    ``grad/<name>``, ``grad/alpha`` (or ``grad/alpha/<name>``)."""
    out = {"outer_loss": result["outer_loss"], "inner_losses": result["inner_losses"]}
    out.update({f"grad/{k}": v for k, v in result["grads"].items()})
    if isinstance(result["alpha_grad"], dict):
        out.update({f"grad/alpha/{k}": v for k, v in result["alpha_grad"].items()})
    else:
        out["grad/alpha"] = result["alpha_grad"]
    return out


def _float64(params: Any, alpha: Any, tasks: tuple) -> tuple[dict[str, np.ndarray], Any, tuple]:
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    if isinstance(alpha, dict):
        alpha = {k: np.asarray(v, dtype=np.float64) for k, v in alpha.items()}
    else:
        alpha = np.asarray(alpha, dtype=np.float64)
    return params, alpha, tuple(np.asarray(t, dtype=np.float64) for t in tasks)


def _one(tree: Any) -> Any:
    """A leading D = 1 axis, complex."""
    if isinstance(tree, dict):
        return {k: v[None].astype(complex) for k, v in tree.items()}
    return tree.reshape(1).astype(complex)


def _step_size(alpha: Any, name: str, w: np.ndarray, t: int, cfg: Config) -> np.ndarray:
    """α for parameter ``name`` at inner step t (1, 2, …) [D, ...], broadcastable against its copies
    ``w`` [D, *shape]. per_layer_step (LSLR): α[name] is [D, T], step t takes column t − 1."""
    if cfg.alpha_mode == "per_layer_step":
        column = alpha[name][:, min(t, cfg.inner_steps) - 1]
        return column.reshape((-1,) + (1,) * (w.ndim - 1))
    if isinstance(alpha, dict):
        return alpha[name]
    return alpha.reshape((-1,) + (1,) * (w.ndim - 1))


def _basis(shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape))
    return np.eye(size).reshape((size, *shape))
