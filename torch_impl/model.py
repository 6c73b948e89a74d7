"""The models (MLP, the MAML paper's conv net) as functions of explicit parameters, their losses,
and NumPy conversion (PyTorch)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from parity.config import Config, ConfigError, lookup
from parity.devices import check_precision, not_visible, parse_device
from parity.validate import ArrayTypeError, Spec, check_call

Params = dict[str, torch.Tensor]

# Option choices as tables (an unknown name is refused by parity.config.lookup, never an `else`).
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


def forward(params: Params, x: torch.Tensor, cfg: Config) -> torch.Tensor:
    """``cfg``'s model on points ``x`` [..., P, *input] → [..., P, n_outputs], after checking ``x``'s
    shape and dtype (:func:`predict` is the same without the checks, for the inner loop).
    """
    check_inputs("forward", None, params=params, x=x)
    return predict(params, x, cfg)


def predict(params: Params, x: torch.Tensor, cfg: Config) -> torch.Tensor:
    """The forward pass of the model ``cfg.model`` names (:data:`MODELS`), its part as settings."""
    return lookup(MODELS, "model", cfg.model.name)(params, x, cfg.model)  # type: ignore[no-any-return]


def mlp(params: Params, x: torch.Tensor, model: Any) -> torch.Tensor:
    """MLP 1 → hidden… → 1 on points ``x`` [..., P, 1] → [..., P, 1] (``model``: the MLP part).

    Weights are (out, in); parameters may carry the same leading task axes as ``x``.
    """
    n_layers = len(params) // 2
    act = lookup(ACTIVATIONS, "activation", model.activation)
    h = x  # [..., P, 1]
    for i in range(n_layers):
        w, b = params[f"w{i}"], params[f"b{i}"]  # [..., out, in], [..., out]
        h = h @ torch.swapaxes(w, -1, -2) + b[..., None, :]  # [..., P, out]
        if i < n_layers - 1:
            h = act(h)
    return h


def conv(params: Params, x: torch.Tensor, model: Any, record: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The MAML paper's conv net (parity/models/conv.py's definition) on images ``x``
    [..., P, C, H, W] → logits [..., P, n_way] (``model``: the Conv part).

    Weights are OIHW; a parameter may carry the leading task axes of ``x`` or none. The G tasks run
    as one grouped convolution (``groups=G``: task g's images meet only task g's filters), the
    activations laid out [P, G, C, H, W] so that every block's input is a view: one kernel per layer
    for the whole meta-batch. torch.func.vmap over a per-task forward gives the same numbers and lowers
    to the same grouped kernel with reshapes around it: measured on one core (meta-batch 32, 1 inner
    step, 4×64 stride-2 blocks), 155 against 171 ms per outer step on 8×8 images, 1218 against 1255 on 28×28.

    ``record``: a dict that receives every block's output, ``block<i>`` [..., P, C, H', W'] (after
    its ReLU and pool, in the exchange layout), and the ``logits`` (:func:`conv_layers`).
    """
    lead = x.shape[:-4]
    G = math.prod(lead)
    task = {name: p.expand(lead + p.shape[p.dim() - _conv_rank(name) :]).reshape(G, -1) for name, p in params.items()}
    P = x.shape[-4]
    h = x.reshape(G, P, *x.shape[-3:]).transpose(0, 1)  # [P, G, C, H, W]
    stride = 2 if model.pool == "stride" else 1
    for i in range(model.depth):
        w = params[f"w{i}"]
        w = task[f"w{i}"].reshape(G * w.shape[-4], *w.shape[-3:])  # [G·O, I, 3, 3]
        z = F.conv2d(h.reshape(P, -1, *h.shape[-2:]), w, task[f"b{i}"].reshape(-1), stride=stride, padding=1, groups=G)
        h = z.reshape(P, G, -1, *z.shape[-2:])  # [P, G, O, H', W']
        h = batch_norm(h, task[f"gamma{i}"], task[f"beta{i}"], model.bn_eps)
        h = torch.relu(h)
        if model.pool == "max":
            h = F.max_pool2d(h.reshape(P, -1, *h.shape[-2:]), 2).reshape(P, G, -1, *(s // 2 for s in h.shape[-2:]))
        if record is not None:
            record[f"block{i}"] = h.transpose(0, 1).reshape(lead + (P, *h.shape[-3:]))
    features = h.reshape(P, G, -1).transpose(0, 1)  # [G, P, F], flattened in (C, H, W) order
    w_head = task["w_head"].reshape(G, -1, features.shape[-1])  # [G, N, F]
    logits = torch.baddbmm(task["b_head"][:, None, :], features, w_head.transpose(1, 2))  # [G, P, N]
    logits = logits.reshape(lead + logits.shape[1:])
    if record is not None:
        record["logits"] = logits
    return logits


def conv_layers(params: Params, x: torch.Tensor, model: Any) -> dict[str, torch.Tensor]:
    """:func:`conv` with every block's output kept: ``block<i>`` [..., P, C, H', W'] and ``logits``
    [..., P, n_way]; the trace records them so that a divergence in the forward pass is named by its
    block."""
    record: dict[str, torch.Tensor] = {}
    conv(params, x, model, record)
    return record


def _conv_rank(name: str) -> int:
    """A conv parameter's own rank: w{i} (O, I, 3, 3), w_head (N, F), the rest (O,) or (N,)."""
    return 2 if name == "w_head" else 4 if name.startswith("w") else 1


def batch_norm(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    """Per task and channel, with the statistics of these images (over images, rows, columns; biased
    variance): h [P, G, C, H, W], γ and β [G, C]."""
    mean = torch.mean(h, dim=(0, 3, 4), keepdim=True)
    var = torch.mean(torch.square(h - mean), dim=(0, 3, 4), keepdim=True)
    return (h - mean) / torch.sqrt(var + eps) * gamma[..., None, None] + beta[..., None, None]


def _pointwise(error: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per_point = error(pred - y)
        return torch.mean(per_point, dim=(-2, -1))

    return loss


def cross_entropy(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of logits [..., P, N] against one-hot ``y``: the mean over the P points
    of −Σ_n y·log_softmax (the max subtracted before the exponent) → [...]."""
    nll = -torch.sum(y * torch.log_softmax(pred, dim=-1), dim=-1)
    return torch.mean(nll, dim=-1)


# (pred, y) -> the loss of each task [...], by the name the family's ``loss`` field gives.
POINT_LOSSES = {"l1": _pointwise(torch.abs), "mse": _pointwise(torch.square), "cross_entropy": cross_entropy}


def point_loss(pred: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """The loss of each task, a mean over its points: [..., P, n_outputs] → [...]."""
    return lookup(POINT_LOSSES, "loss", kind)(pred, y)  # type: ignore[no-any-return]


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of points whose largest logit is the one-hot label's class: [..., P, N] → [...]."""
    hits = torch.argmax(pred, dim=-1) == torch.argmax(y, dim=-1)
    return torch.mean(hits.to(pred.dtype), dim=-1)


# The model axis (parity.models.MODELS): each entry's forward pass, by name.
MODELS = {"mlp": mlp, "conv": conv}
# The models whose layers the trace records (parity.models: a model part's ``layer_shapes``).
LAYERS = {"conv": conv_layers}


def check_dtype(dtype: str) -> None:
    """PyTorch makes float64 tensors whenever asked; nothing to switch on."""


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``cpu``, ``gpu``, ``cuda:N`` → a ``torch.device``; None → None (PyTorch's default, the CPU).

    ``gpu`` is ``torch.device("cuda")``, CUDA's current device (under torchrun each rank's own,
    ``cuda:LOCAL_RANK``, after torch_impl.distributed.initialize). A device PyTorch cannot see is
    refused at once: ``ConfigError("device", ...)``, one line.
    """
    if device is None or isinstance(device, torch.device):
        return device
    kind, index = parse_device(device)
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "tpu":
        raise ConfigError("device", f"{device!r}: the PyTorch twin runs on cpu or CUDA GPUs (gpu, cuda:N)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise not_visible(device, "PyTorch", f"torch {torch.__version__}, CUDA {torch.version.cuda or 'not built'}")
    if index is not None and index >= count:
        raise ConfigError("device", f"{device!r}: PyTorch sees {count} CUDA device(s), numbered from 0")
    return torch.device("cuda") if index is None else torch.device("cuda", index)


def to_arrays(tree: Any, dtype: str, device: str | torch.device | None = None) -> Any:
    """NumPy leaves → tensors of ``dtype`` on ``device`` (the one conversion on the way in)."""
    check_dtype(dtype)
    return _to_tensors(tree, getattr(torch, dtype), resolve_device(device) or torch.device("cpu"))


def _to_tensors(tree: Any, dtype: torch.dtype, device: torch.device) -> Any:
    if isinstance(tree, dict):
        return {k: _to_tensors(v, dtype, device) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        items = [_to_tensors(v, dtype, device) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return torch.as_tensor(np.asarray(tree), dtype=dtype, device=device).clone()


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[None]:
    """Inside the block, ``highest``: full float32 matmuls (no TF32 in cuBLAS or cuDNN);
    ``default``: PyTorch's own defaults. The previous settings are restored on the way out.
    """
    if check_precision(precision) == "default":
        yield
        return
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def device_description(device: str | torch.device | None) -> str:
    """The device the twin computes on, e.g. ``cpu (4 threads, PyTorch)`` or ``cuda:0 (NVIDIA H100 …)``."""
    dev = resolve_device(device) or torch.device("cpu")
    if dev.type == "cuda":
        index = torch.cuda.current_device() if dev.index is None else dev.index
        return f"cuda:{index} ({torch.cuda.get_device_name(index)}, PyTorch)"
    return f"cpu ({torch.get_num_threads()} threads, PyTorch)"


def to_numpy(tree: Any) -> Any:
    """Tensors → NumPy arrays (the one conversion on the way out)."""
    if isinstance(tree, dict):
        return {k: to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        items = [to_numpy(v) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return tree.detach().cpu().numpy()


def check_inputs(function: str, cfg: Config | None, batched_params: bool = False, **arrays: Any) -> None:
    """Shape and dtype checks of a public function's arguments (``parity.validate.check_call``).

    Reads shapes and dtypes only; raises ``ArrayShapeError`` / ``ArrayTypeError`` naming the argument.
    """
    specs = {name: describe(function, name, value) for name, value in arrays.items()}
    check_call(function, cfg, batched_params=batched_params, **specs)


def describe(function: str, argument: str, value: Any) -> Any:
    """The :class:`parity.validate.Spec` tree of ``value`` (an array, or a dict / tuple of them)."""
    if isinstance(value, torch.Tensor):
        return Spec(tuple(value.shape), str(value.dtype).removeprefix("torch."))
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (tuple, list)):
        items = list(enumerate(value))
    else:
        raise ArrayTypeError(f"{function}: {argument} must be a torch.Tensor; got {type(value).__name__}")
    # Arrays directly; only what is not one pays for its argument's name (the checks are per call).
    specs = [
        Spec(tuple(v.shape), str(v.dtype).removeprefix("torch."))
        if isinstance(v, torch.Tensor)
        else describe(function, f"{argument}[{k!r}]", v)
        for k, v in items
    ]
    return dict(zip(value, specs, strict=True)) if isinstance(value, dict) else specs
