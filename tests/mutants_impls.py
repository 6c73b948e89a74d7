"""Mutants of the worked example (``examples/torchfunc_maml.py``): each plants one bug users hit.

Each is the example's class with one method overridden, loadable as a SPEC
``tests/mutants_impls.py:NAME``; ``tests/test_mutants.py`` asserts that ``check`` catches every
one, naming the case and the quantity. ``CONTROL`` is the example itself, unchanged, loaded the
same way: it must pass, so that a caught mutant is caught for its bug and nothing else.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "torchfunc_maml.py"


def _load_example() -> Any:
    name = "_maml_parity_example_torchfunc"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


TorchFuncMAML = _load_example().TorchFuncMAML


class Control(TorchFuncMAML):
    name = "control"


class NoCreateGraph(TorchFuncMAML):
    """(a) The inner gradient taken as a constant although the config asks for second order:
    ``torch.autograd.grad(loss, params)`` without ``create_graph=True`` (silently FOMAML)."""

    name = "no-create-graph"

    def inner_grad(self, g, first_order):
        return {k: v.detach() for k, v in g.items()}


class AlphaDetached(TorchFuncMAML):
    """(b) α detached from the graph: dL/dα = 0, a learned α that never learns."""

    name = "alpha-detached"

    def inner_step(self, w, a, g):
        a = {k: v.detach() for k, v in a.items()} if isinstance(a, dict) else a.detach()
        return super().inner_step(w, a, g)


class SumLoss(TorchFuncMAML):
    """(c) The sum over points instead of the mean."""

    name = "sum-loss"

    def loss(self, pred, y, kind):
        err = pred - y
        return err.abs().sum() if kind == "l1" else (err * err).sum()


class TransposedHidden(TorchFuncMAML):
    """(d) A transposed weight: ``h @ W`` instead of ``h @ W.T``. Only a square layer lets this
    through silently (w1 is 32 × 32); on w0 (32, 1) the shapes would refuse it."""

    name = "transposed-w1"

    def model(self, w, x, activation):
        return super().model({**w, "w1": w["w1"].T}, x, activation)


class TransposedInput(TorchFuncMAML):
    """(d') The same slip on the non-square first layer (w0 is (32, 1)): it raises, a FAIL row."""

    name = "transposed-w0"

    def model(self, w, x, activation):
        return super().model({**w, "w0": w["w0"].T}, x, activation)


class AlphaWrongSign(TorchFuncMAML):
    """(e) α applied with the wrong sign: ``w + α·g`` (gradient ascent in the inner loop)."""

    name = "alpha-wrong-sign"

    def inner_step(self, w, a, g):
        return super().inner_step(w, a, {k: -v for k, v in g.items()})


class Raises(TorchFuncMAML):
    """(f) An implementation that raises."""

    name = "raises"

    def meta_value_and_grad(self, params, alpha, tasks, cfg):
        raise RuntimeError("planted failure: the meta-gradient could not be computed")


class MissingKey(TorchFuncMAML):
    """(g) The wrong return structure: no ``inner_losses``."""

    name = "missing-key"

    def meta_value_and_grad(self, params, alpha, tasks, cfg):
        out = super().meta_value_and_grad(params, alpha, tasks, cfg)
        del out["inner_losses"]
        return out


class Float32Always(TorchFuncMAML):
    """(g') A silent change of precision: float32 results in a float64 case."""

    name = "float32-always"

    def meta_value_and_grad(self, params, alpha, tasks, cfg):
        return super().meta_value_and_grad(params, alpha, tasks, cfg.replace(dtype="float32"))


class Float64Only(TorchFuncMAML):
    """Correct, but declares float32 unsupported (for ``--strict``)."""

    name = "float64-only"

    def supports(self, cfg):
        return "computes in float64 only" if cfg.dtype != "float64" else None


class SupportsNothing(Raises):
    """Declares every case unsupported; would raise if it were ever run."""

    name = "supports-nothing"

    def supports(self, cfg):
        return "supports no case"


# --- the dimensions the original matrix held still (issue 20 §6): each passed it, see test_mutants --


class SupportSizeForQuery(TorchFuncMAML):
    """(h) The query set cut to the support set's size K (a buffer or a slice sized by K, as in code
    written for K = Q): only a case with more query than support points can see it."""

    name = "support-size-for-query"

    def meta_value_and_grad(self, params, alpha, tasks, cfg):
        x_s, y_s, x_q, y_q = tasks
        K = x_s.shape[1]
        return super().meta_value_and_grad(params, alpha, (x_s, y_s, x_q[:, :K], y_q[:, :K]), cfg)


class DepthFixedAtTwo(TorchFuncMAML):
    """(i) The activation after layers 0 and 1 (``i < 2``, written for 1 → 32 → 32 → 1) instead of
    after every layer but the last: right at two hidden layers only."""

    name = "depth-fixed-at-two"

    def model(self, w, x, activation):
        act = torch.tanh if activation == "tanh" else torch.relu
        h = x
        for i in range(len(w) // 2):
            h = h @ w[f"w{i}"].T + w[f"b{i}"]
            if i < 2:
                h = act(h)
        return h


class ReluFirstLayerOnly(TorchFuncMAML):
    """(j) Under ``relu``, only the first hidden layer activated (the later ones left linear, as in a
    port that changed one call site): tanh is right, and so is ReLU at one hidden layer."""

    name = "relu-first-layer-only"

    def model(self, w, x, activation):
        if activation != "relu":
            return super().model(w, x, activation)
        n = len(w) // 2
        h = x
        for i in range(n):
            h = h @ w[f"w{i}"].T + w[f"b{i}"]
            if i == 0 and n > 1:
                h = torch.relu(h)
        return h


class SoftplusRhoGradient(TorchFuncMAML):
    """(k) Under the softplus parametrisation, the gradient of the variable it learns, ρ with
    α = softplus(ρ), returned for dL/dα: the parametrisation's chain rule dα/dρ = sigmoid(ρ)
    = 1 − e^(−α) leaks through the contract, which hands over α and asks for dL/dα either way."""

    name = "softplus-rho-gradient"

    def meta_value_and_grad(self, params, alpha, tasks, cfg):
        out = super().meta_value_and_grad(params, alpha, tasks, cfg)
        if cfg.alpha_parametrisation != "softplus":
            return out
        dalpha_drho = {k: -np.expm1(-v) for k, v in alpha.items()} if isinstance(alpha, dict) else -np.expm1(-alpha)
        grad = out["alpha_grad"]
        if isinstance(grad, dict):
            out["alpha_grad"] = {k: (grad[k] * dalpha_drho[k]).astype(grad[k].dtype) for k in grad}
        else:
            out["alpha_grad"] = np.asarray(grad * dalpha_drho, dtype=grad.dtype)
        return out


CONTROL = Control()
NO_CREATE_GRAPH = NoCreateGraph()
ALPHA_DETACHED = AlphaDetached()
SUM_LOSS = SumLoss()
TRANSPOSED_W1 = TransposedHidden()
TRANSPOSED_W0 = TransposedInput()
ALPHA_WRONG_SIGN = AlphaWrongSign()
RAISES = Raises()
MISSING_KEY = MissingKey()
FLOAT32_ALWAYS = Float32Always()
FLOAT64_ONLY = Float64Only()
SUPPORTS_NOTHING = SupportsNothing()
SUPPORT_SIZE_FOR_QUERY = SupportSizeForQuery()
DEPTH_FIXED_AT_TWO = DepthFixedAtTwo()
RELU_FIRST_LAYER_ONLY = ReluFirstLayerOnly()
SOFTPLUS_RHO_GRADIENT = SoftplusRhoGradient()
