"""The MAML paper's convolutional network (Finn et al. 2017, after Vinyals et al. 2016), neutral part.

``depth`` blocks of [3×3 convolution with ``width`` filters and a bias, batch norm, ReLU, then a
2×2 max-pool (``pool: max``) or, instead of the pool, a stride-2 convolution (``pool: stride``, as
the paper's Omniglot network)], flattened in (channel, row, column) order, then a linear head to
``n_way`` logits. Exchange layout is PyTorch's: images ``[..., P, C, H, W]``, convolution weights
``(out, in, 3, 3)``, the head ``(n_way, features)``; an implementation may compute in another
layout inside.

Batch norm normalises with the statistics of the images it is applied to (per channel, over the
images of one task and their rows and columns; the biased variance), ``(z − mean)/√(var + bn_eps)·γ
+ β``: the support set inside the inner loop, the query set for the outer loss, as the reference
code does (no running statistics). Padding is 1 on every side ("SAME" for a 3×3 kernel at stride 1);
a stride-2 convolution of a side ``s`` gives ``⌈s/2⌉``, a max-pool ``⌊s/2⌋``.

Parameters: ``w{i}`` (width, in, 3, 3), ``b{i}`` (width,), ``gamma{i}``, ``beta{i}`` (width,) for each
block, then ``w_head`` (n_way, features), ``b_head`` (n_way,). ``adapt`` names what the inner loop
updates: ``all`` (MAML), ``head`` (ANIL: ``w_head``, ``b_head`` only) or ``no_bn`` (every parameter but
the batch norm's γ and β); the others keep their value through the inner loop and still get an outer
gradient. The forward passes live in ``jax_impl/model.py``, ``torch_impl/model.py`` and the oracle.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from parity.parts import ConfigError, Part, check_choice, check_declared, check_float, check_int, field

POOLS = ("max", "stride")
ADAPT = ("all", "head", "no_bn")


@check_declared
@dataclasses.dataclass(frozen=True)
class Conv(Part):
    """depth × [conv 3×3, batch norm, ReLU, 2×2 max-pool or stride 2] → linear head."""

    axis = "model"
    name: str = field("conv", "meta_gradient")
    depth: int = field(4, "meta_gradient", "convolution blocks")
    width: int = field(64, "meta_gradient", "filters per convolution")
    pool: str = field("max", "meta_gradient", "max (2×2 max-pool after each block) | stride (stride-2 convolutions)")
    bn_eps: float = field(1e-3, "meta_gradient", "batch norm's ε (the reference code's TensorFlow default, 1e-3)")
    adapt: str = field("all", "meta_gradient", "what the inner loop updates: all | head (ANIL) | no_bn")

    def check(self) -> None:
        check_int("depth", self.depth, minimum=1)
        check_int("width", self.width, minimum=1)
        check_choice("pool", self.pool, POOLS)
        check_float("bn_eps", self.bn_eps, positive=True)
        check_choice("adapt", self.adapt, ADAPT)
        object.__setattr__(self, "bn_eps", float(self.bn_eps))

    def spatial(self, side: int) -> int:
        """The side of the feature map after every block, from an input side ``side``."""
        for _ in range(self.depth):
            side = math.ceil(side / 2) if self.pool == "stride" else side // 2
            if side < 1:
                raise ConfigError("depth", f"{self.depth} blocks shrink a {side}-pixel image below one pixel")
        return side

    def param_shapes(self, input_shape: tuple[int, ...], n_outputs: int) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape, blocks first, then the head (see the module docstring)."""
        channels, height, width = input_shape
        if height != width:
            raise ConfigError("model", f"conv takes square images, got {height}x{width}")
        shapes: dict[str, tuple[int, ...]] = {}
        n_in = channels
        for i in range(self.depth):
            shapes[f"w{i}"] = (self.width, n_in, 3, 3)
            shapes[f"b{i}"] = (self.width,)
            shapes[f"gamma{i}"] = (self.width,)
            shapes[f"beta{i}"] = (self.width,)
            n_in = self.width
        side = self.spatial(height)
        shapes["w_head"] = (n_outputs, self.width * side * side)
        shapes["b_head"] = (n_outputs,)
        return shapes

    def layer_shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Per image, each block's output (after its ReLU and pool), ``block<i>`` (C, H', W'): the
        layers a trace records (``trace/activation/block<i>``), so that a divergence in the forward
        pass is named by its block. Optional for a model part (the MLP records none)."""
        _, side, _ = input_shape
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(self.depth):
            side = math.ceil(side / 2) if self.pool == "stride" else side // 2
            shapes[f"block{i}"] = (self.width, side, side)
        return shapes

    def activations_per_point(self, input_shape: tuple[int, ...]) -> int:
        """Numbers a forward pass keeps per image for the backward pass: the input, then per block
        the convolution's, batch norm's and ReLU's outputs (3 feature maps), then the logits."""
        channels, side, _ = input_shape
        kept = channels * side * side
        for _ in range(self.depth):
            kept += 3 * self.width * side * side if self.pool == "max" else 3 * self.width * math.ceil(side / 2) ** 2
            side = math.ceil(side / 2) if self.pool == "stride" else side // 2
        return kept + self.width * side * side

    def adapted(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The parameters the inner loop updates (``adapt``)."""
        if self.adapt == "head":
            return tuple(n for n in names if n.endswith("_head"))
        if self.adapt == "no_bn":
            return tuple(n for n in names if not n.startswith(("gamma", "beta")))
        return names

    def init_params(self, shapes: dict[str, tuple[int, ...]], rng: Any, dtype: str) -> dict[str, Any]:
        """Glorot-uniform weights (fan over the kernel's receptive field), zero biases and β, γ = 1."""
        import numpy as np

        params: dict[str, Any] = {}
        for name, shape in shapes.items():
            if name.startswith("w"):
                receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
                bound = math.sqrt(6.0 / ((shape[0] + shape[1]) * receptive))
                params[name] = rng.uniform(-bound, bound, size=shape).astype(dtype)
            elif name.startswith("gamma"):
                params[name] = np.ones(shape, dtype=dtype)
            else:
                params[name] = np.zeros(shape, dtype=dtype)
        return params
