"""The rows' implementations, each prepared to run a number of outer steps per synchronised call.

- ``jax`` / ``jax-unrolled`` / ``jax-cpu``: ``jax_impl.train.train_chunk``, a chunk of ``n``
  outer steps per call, compiled ahead of time (trace + lower + XLA compile reported apart as
  ``compile_s``), tasks pre-sampled as device arrays; ``unroll`` passed as the static argument of
  ``train_chunk`` (jax-unrolled: unroll = T). jax-cpu: the same on the host's CPU in a GPU run.
- ``torch``: ``torch_impl.train.train_chunk``, the batched twin (all B tasks at once).
- ``torch-func``: the same training step with the meta-gradient of ``torch_impl.func_meta``
  (``functional_call`` + ``grad`` + ``vmap`` over tasks), passed as ``train_chunk``'s ``grad_fn``.
- ``torch-graph``: the twin's ``train_step`` captured once as a CUDA graph (meta-gradient with
  ``create_graph`` and both optimisers' steps, Adam with ``capturable=True``) and replayed; the
  next step's tasks are copied into the graph's static input tensors before each replay. GPU only.
- ``seed-loop``: ``torch_impl.seed_loop``, the seed's loop (one task at a time, Python loop over
  parameters), the baseline of ``speedup_vs_seed_loop``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

from parity.bench.measure import Prepared, Unavailable, cuda_peak, host_peak, jax_device, xla_peak
from parity.bench.settings import IMPLS, Setting, jax_chunk_length
from parity.config import ConfigError


def _steps_for(seconds_per_step: float, min_call_s: float, max_steps: int) -> int:
    return int(min(max_steps, max(1, math.ceil(min_call_s / max(seconds_per_step, 1e-9)))))


def _torch_device(device: str) -> str:
    return "cuda" if device == "gpu" else "cpu"


# Host → device for each twin. Local helpers until the twins' adapters place arrays themselves
# (issue 10: adapter.to_arrays(tree, dtype) on the adapter's device); swap them then.
def _place_jax(twin: Any, tree: Any, dtype: str, device: str) -> Any:
    import jax

    return jax.device_put(twin.model.to_arrays(tree, dtype), jax_device(device))


def _place_torch(twin: Any, tree: Any, dtype: str, device: str) -> Any:
    return twin.model.to_arrays(tree, dtype, _torch_device(device))


# --- JAX -----------------------------------------------------------------------------------------


def prepare_jax(setting: Setting, device: str, steps: int | None = None, unroll: int = 0) -> Prepared:
    """Compile ``train_chunk`` for ``steps`` outer steps ahead of time; the call runs it once."""
    import jax

    from parity.init import init_alpha, init_params
    from parity.tasks import sample_batches
    from parity.twins import load

    cfg = setting.cfg()
    twin = load("jax", cfg.dtype)

    def to(tree: Any) -> Any:
        return _place_jax(twin, tree, cfg.dtype, device)

    steps = steps or jax_chunk_length(setting)
    state = twin.train.init_state(to(init_params(cfg)), to(init_alpha(cfg)), cfg)
    tasks = jax.block_until_ready(to(tuple(sample_batches(cfg, 0, steps)[:4])))  # 4 × [N, B, P, 1]
    t0, c0 = time.perf_counter(), time.process_time()
    # jit of train_chunk (itself jitted or not) traces into the same single XLA computation; AOT
    # lowering and compiling it here separates compile time from run time.
    chunk = jax.jit(twin.train.train_chunk, static_argnames=("cfg", "unroll"))
    lowered = chunk.lower(state, tasks, cfg, unroll=unroll)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    extra: dict[str, Any] = {
        "trace_lower_s": t1 - t0,
        "xla_compile_s": t2 - t1,
        "compile_cpu_s": time.process_time() - c0,  # ≈ compile_s on a quiet core, more with parallel codegen
        "unroll": unroll,
        "jax_device": str(jax_device(device)),
    }
    with contextlib.suppress(Exception):  # not every backend reports it
        ma = compiled.memory_analysis()
        assert ma is not None
        extra["xla_temp_mb"] = ma.temp_size_in_bytes / 2**20
        extra["xla_total_mb"] = (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes) / 2**20

    def call() -> None:
        jax.block_until_ready(compiled(state, tasks))

    # XLA allocates what the executable declares (temp + arguments + outputs): exact, and free of
    # the host allocator's reuse of memory freed by earlier rows. The RSS delta goes in extra.
    peak = xla_peak(extra, rss=device == "cpu")
    return Prepared(call, steps, compile_s=t2 - t0, peak=peak, extra=extra, compiled=compiled)


# --- PyTorch -------------------------------------------------------------------------------------


def _capturable_optimizers(state: Any) -> None:
    """Adam with ``capturable=True``: its step counter lives on the GPU with the moments.

    Needed for CUDA-graph capture, and on a GPU for the twin's ``all_finite`` (which concatenates
    the optimisers' state tensors: torch.optim keeps a plain Adam's step counter on the CPU).
    Same update formula; SGD keeps no state and is left alone.
    """
    import warnings

    import torch

    # torch.optim warns once per instance that capturable=True may cost time when not captured.
    warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
    for field in ("params_opt", "alpha_opt"):
        opt = getattr(state, field)
        if isinstance(opt, torch.optim.Adam):
            group = opt.param_groups[0]
            fresh = torch.optim.Adam(
                group["params"], lr=group["lr"], betas=group["betas"], eps=group["eps"], capturable=True
            )
            setattr(state, field, fresh)


def _torch_state(setting: Setting, device: str) -> tuple[Any, Any, Any]:
    from parity.init import init_alpha, init_params
    from parity.twins import load

    cfg = setting.cfg()
    twin = load("torch", cfg.dtype)
    state = twin.train.init_state(
        _place_torch(twin, init_params(cfg), cfg.dtype, device),
        _place_torch(twin, init_alpha(cfg), cfg.dtype, device),
        cfg,
    )
    if device == "gpu":
        _capturable_optimizers(state)
    return cfg, twin, state


def prepare_torch(
    setting: Setting, device: str, min_call_s: float, grad_fn: Callable[..., Any] | None = None
) -> Prepared:
    """The batched twin's ``train_chunk`` on enough steps per call to last ``min_call_s``.

    ``grad_fn``: another meta-gradient for the same training step (the torch-func row).
    """
    import torch

    from parity.tasks import sample_batches

    cfg, twin, state = _torch_state(setting, device)
    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)
    kwargs = {} if grad_fn is None else {"grad_fn": grad_fn}

    def make_call(steps: int) -> Callable[[], None]:
        tasks = _place_torch(twin, tuple(sample_batches(cfg, 0, steps)[:4]), cfg.dtype, device)  # 4 × [N, B, P, 1]

        def call() -> None:
            twin.train.train_chunk(state, tasks, cfg, **kwargs)
            sync()

        return call

    probe = make_call(1)
    t = time.perf_counter()
    probe()  # the first call also pays PyTorch's lazy initialisation
    probe_s = time.perf_counter() - t
    steps = _steps_for(probe_s, min_call_s, 200)
    extra = {"adam_capturable": True} if device == "gpu" else {}
    return Prepared(make_call(steps), steps, peak=cuda_peak if device == "gpu" else host_peak, extra=extra)


def prepare_torchfunc(setting: Setting, device: str, min_call_s: float) -> Prepared:
    """The twin's training step with torch.func's meta-gradient (``torch_impl.func_meta``)."""
    from torch_impl import func_meta

    reason = func_meta.supports(setting.cfg())
    if reason is not None:
        raise Unavailable(reason)
    return prepare_torch(setting, device, min_call_s, grad_fn=func_meta.meta_value_and_grad)


def prepare_torch_graph(setting: Setting, device: str, min_call_s: float) -> Prepared:
    """The twin's ``train_step`` as one CUDA graph, replayed once per outer step."""
    if device != "gpu":
        raise Unavailable("CUDA graphs need a GPU")
    import torch

    from parity.tasks import sample_batches

    cfg, twin, state = _torch_state(setting, device)
    first = _place_torch(twin, tuple(sample_batches(cfg, 0, 1)[:4]), cfg.dtype, device)
    static = tuple(t[0].clone() for t in first)  # the graph's input tensors: [B, P, 1] each
    try:
        # Warm-up on a side stream (Adam's state is created at its first step, outside the graph).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                twin.train.train_step(state, static, cfg)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        t0 = time.perf_counter()
        with torch.cuda.graph(graph):
            _, metrics = twin.train.train_step(state, static, cfg)
        capture_s = time.perf_counter() - t0
        graph.replay()
        torch.cuda.synchronize()
        if not bool(metrics["finite"]):
            raise Unavailable("the captured step's outputs are not finite after a replay")
    except Unavailable:
        raise
    except Exception as e:  # capture refused: the row is skipped with the reason
        raise Unavailable(f"CUDA graph capture failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from e

    def make_call(steps: int) -> Callable[[], None]:
        tasks = _place_torch(twin, tuple(sample_batches(cfg, 0, steps)[:4]), cfg.dtype, device)

        def call() -> None:
            for i in range(steps):
                for dst, src in zip(static, tasks, strict=True):
                    dst.copy_(src[i])
                graph.replay()
            torch.cuda.synchronize()

        return call

    probe = make_call(1)
    t = time.perf_counter()
    probe()
    steps = _steps_for(time.perf_counter() - t, min_call_s, 500)
    extra = {"capture_s": capture_s, "adam_capturable": True}
    return Prepared(make_call(steps), steps, compile_s=capture_s, peak=cuda_peak, extra=extra)


def prepare_seed_loop(setting: Setting, device: str, min_call_s: float) -> Prepared:
    """The seed's loop, ``seed_step`` per outer step, on enough steps per call to last ``min_call_s``."""
    import torch

    from parity.tasks import sample_batches
    from torch_impl import seed_loop

    cfg = setting.cfg()
    dev = _torch_device(device)
    state = seed_loop.init_state(cfg, dev)
    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)

    def make_call(steps: int) -> Callable[[], None]:
        tasks = seed_loop.to_tensors(sample_batches(cfg, 0, steps), cfg.dtype, dev)  # 4 × [N, B, P, 1]

        def call() -> None:
            for i in range(steps):
                x, y, v_x, v_y = (t[i] for t in tasks)
                seed_loop.seed_step(state, x, y, v_x, v_y, cfg)
            sync()

        return call

    # Probe with a few tasks: the loop is the same per task, and B = 256 would take seconds.
    probe_setting = dataclasses.replace(setting, B=min(setting.B, 2))
    probe_tasks = seed_loop.to_tensors(sample_batches(probe_setting.cfg(), 0, 1), cfg.dtype, dev)
    t = time.perf_counter()
    x, y, v_x, v_y = (t[0] for t in probe_tasks)
    seed_loop.seed_step(state, x, y, v_x, v_y, cfg)
    sync()
    per_task = (time.perf_counter() - t) / probe_setting.B
    steps = _steps_for(per_task * setting.B, min_call_s, 200)
    return Prepared(make_call(steps), steps, peak=cuda_peak if device == "gpu" else host_peak)


def prepare(
    impl: str, setting: Setting, device: str, min_call_s: float, chunk: int | None = None, unroll: int = 0
) -> Prepared:
    """One implementation ready to time; ``chunk`` fixes JAX's outer steps per compiled call,
    ``unroll`` is the jax row's (jax-unrolled always unrolls all T steps). Raises Unavailable."""
    if impl == "jax":
        return prepare_jax(setting, device, chunk, unroll)
    if impl == "jax-unrolled":
        return prepare_jax(setting, device, chunk, max(setting.T, 1))
    if impl == "jax-cpu":
        return prepare_jax(setting, "cpu", chunk, unroll)
    if impl == "torch":
        return prepare_torch(setting, device, min_call_s)
    if impl == "torch-func":
        return prepare_torchfunc(setting, device, min_call_s)
    if impl == "torch-graph":
        return prepare_torch_graph(setting, device, min_call_s)
    if impl == "seed-loop":
        return prepare_seed_loop(setting, device, min_call_s)
    raise ConfigError("impl", f"must be one of {', '.join(IMPLS)}; got {impl!r}")
