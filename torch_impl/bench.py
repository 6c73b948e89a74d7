"""The PyTorch twin's bench rows (``maml-parity bench``; parity.bench.rows), and its profile.

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
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from parity.bench.measure import Prepared, Unavailable, host_peak
from parity.bench.rows import (
    ACCELERATOR,
    BenchRow,
    Options,
    Target,
    optimizer_ratio,
    remat_ratio,
    row_value,
    steps_for,
)
from parity.bench.settings import (
    ADAM_BATCH_POINT,
    CONV_POINTS,
    LONG_POINT,
    REMAT_B,
    REMAT_T,
    SEED_ALPHA_POINT,
    SEED_LOOP_MAX_B,
    SEED_LOOP_MAX_B_GPU,
    SMALL_B_GPU,
    SWEEP_T,
    Setting,
)
from parity.devices import parse_device


def _on_gpu(device: str) -> bool:
    return parse_device(device).kind == "gpu"


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if _on_gpu(device) else (lambda: None)


@contextlib.contextmanager
def cuda_peak() -> Iterator[dict[str, float]]:
    """Rows on a GPU: the caching allocator's peak above the level before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out: dict[str, float] = {}
    yield out
    torch.cuda.synchronize()
    out["mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20


def _capturable_optimizers(state: Any) -> None:
    """Adam with ``capturable=True``: its step counter lives on the GPU with the moments.

    Needed for CUDA-graph capture, and on a GPU for the twin's ``all_finite`` (which concatenates
    the optimisers' state tensors: torch.optim keeps a plain Adam's step counter on the CPU).
    Same update formula; SGD keeps no state and is left alone.
    """
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


def _state(setting: Setting, device: str) -> tuple[Any, Any, Any]:
    from parity.init import init_alpha, init_params
    from parity.twins import load

    cfg = setting.cfg()
    twin = load("torch", cfg.dtype, device)
    state = twin.train.init_state(
        twin.to_arrays(init_params(cfg), cfg.dtype), twin.to_arrays(init_alpha(cfg), cfg.dtype), cfg
    )
    if _on_gpu(device):
        _capturable_optimizers(state)
    return cfg, twin, state


def prepare(setting: Setting, device: str, min_call_s: float, grad_fn: Callable[..., Any] | None = None) -> Prepared:
    """The batched twin's ``train_chunk`` on enough steps per call to last ``min_call_s``.

    ``grad_fn``: another meta-gradient for the same training step (the torch-func row).
    """
    from parity.tasks import sample_batches

    cfg, twin, state = _state(setting, device)
    sync = _sync(device)
    kwargs = {} if grad_fn is None else {"grad_fn": grad_fn}

    def make_call(steps: int) -> Callable[[], None]:
        tasks = twin.to_arrays(tuple(sample_batches(cfg, 0, steps)[:4]), cfg.dtype)  # 4 × [N, B, P, 1]

        def call() -> None:
            twin.train.train_chunk(state, tasks, cfg, **kwargs)
            sync()

        return call

    probe = make_call(1)
    t = time.perf_counter()
    probe()  # the first call also pays PyTorch's lazy initialisation
    steps = steps_for(time.perf_counter() - t, min_call_s, 200)
    extra = {"adam_capturable": True} if _on_gpu(device) else {}
    return Prepared(make_call(steps), steps, peak=cuda_peak if _on_gpu(device) else host_peak, extra=extra)


def prepare_func(setting: Setting, device: str, min_call_s: float) -> Prepared:
    """The twin's training step with torch.func's meta-gradient (``torch_impl.func_meta``)."""
    from torch_impl import func_meta

    reason = func_meta.supports(setting.cfg())
    if reason is not None:
        raise Unavailable(reason)
    return prepare(setting, device, min_call_s, grad_fn=func_meta.meta_value_and_grad)


def _capture(twin: Any, state: Any, static: tuple[Any, ...], cfg: Any) -> tuple[Any, float]:
    """Warm up on a side stream (Adam's state is created at its first step, outside the graph),
    then capture one ``train_step``; (graph, capture seconds). Raises Unavailable."""
    try:
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
    return graph, capture_s


def prepare_graph(setting: Setting, device: str, min_call_s: float) -> Prepared:
    """The twin's ``train_step`` as one CUDA graph, replayed once per outer step."""
    if not _on_gpu(device):
        raise Unavailable("CUDA graphs need a GPU")
    from parity.tasks import sample_batches

    cfg, twin, state = _state(setting, device)
    first = twin.to_arrays(tuple(sample_batches(cfg, 0, 1)[:4]), cfg.dtype)
    static = tuple(t[0].clone() for t in first)  # the graph's input tensors: [B, P, 1] each
    graph, capture_s = _capture(twin, state, static, cfg)

    def make_call(steps: int) -> Callable[[], None]:
        tasks = twin.to_arrays(tuple(sample_batches(cfg, 0, steps)[:4]), cfg.dtype)

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
    steps = steps_for(time.perf_counter() - t, min_call_s, 500)
    extra = {"capture_s": capture_s, "adam_capturable": True}
    return Prepared(make_call(steps), steps, compile_s=capture_s, peak=cuda_peak, extra=extra)


def prepare_seed_loop(setting: Setting, device: str, min_call_s: float) -> Prepared:
    """The seed's loop, ``seed_step`` per outer step, on enough steps per call to last ``min_call_s``."""
    from parity.tasks import sample_batches
    from torch_impl import seed_loop
    from torch_impl.model import resolve_device

    cfg = setting.cfg()
    if cfg.model.name != "mlp":
        raise Unavailable(f"the seed's loop builds the MLP only, not model {cfg.model.name!r}")
    dev = str(resolve_device(device))
    state = seed_loop.init_state(cfg, dev)
    sync = _sync(device)

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
    steps = steps_for(per_task * setting.B, min_call_s, 200)
    return Prepared(make_call(steps), steps, peak=cuda_peak if _on_gpu(device) else host_peak)


def rows() -> tuple[BenchRow, ...]:
    """The seed's loop (the baseline), the batched twin, its CUDA graph and its torch.func variant."""
    return (
        BenchRow(
            "seed-loop",
            lambda s, d, o: prepare_seed_loop(s, d, o.min_call_s),
            baseline=True,
            batched=False,
            remat=False,
            max_B=SEED_LOOP_MAX_B,
            max_B_accelerator=SEED_LOOP_MAX_B_GPU,  # launch-bound on a GPU: B = 1 says it all
            max_T=max(SWEEP_T),
            inner_optimizers=frozenset({"sgd"}),  # the seed's loop: plain gradient steps only
        ),
        BenchRow("torch", lambda s, d, o: prepare(s, d, o.min_call_s)),
        BenchRow(
            "torch-graph",
            lambda s, d, o: prepare_graph(s, d, o.min_call_s),
            frozenset({ACCELERATOR}),
            remat=False,
            max_B=SMALL_B_GPU,
            max_B_accelerator=SMALL_B_GPU,
        ),
        BenchRow(
            "torch-func",
            lambda s, d, o: prepare_func(s, d, o.min_call_s),
            frozenset({ACCELERATOR}),
            cpu_default_at=CONV_POINTS,  # issue 18: the twin against the same conv step in torch.func
        ),
    )


def targets() -> tuple[Target, ...]:
    """Issue 4's CPU goals and issue 10's GPU goals for the PyTorch rows."""
    batch = Setting("seed-alpha", T=5, B=25, width=32)
    return (
        Target(
            "torch speedup vs seed loop per task-step, B=25 T=5",
            row_value("torch", batch, "speedup_vs_seed_loop"),
            ">=",
            10,
        ),
        Target(
            f"torch peak memory without / with remat, T={REMAT_T} B={REMAT_B}",
            remat_ratio("torch", Setting("seed-alpha", REMAT_T, REMAT_B, 32)),
            ">=",
            5,
        ),
        Target(
            "torch adam / sgd inner loop, time per step, B=25 T=5",
            optimizer_ratio("torch", ADAM_BATCH_POINT),
            "<=",
            2,
        ),
        Target(
            "torch-graph us per step, B=1 T=5",
            row_value("torch-graph", SEED_ALPHA_POINT, "us_per_step"),
            "<=",
            2000,
            True,
        ),
        Target("torch us per step, T=100 B=4096", row_value("torch", LONG_POINT, "us_per_step"), "<=", 100_000, True),
    )


def configure(device: str, threads: int) -> dict[str, Any]:
    """Intra-op threads (allowed at any time) and one inter-op thread (only before the first parallel op)."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return {"torch_threads": torch.get_num_threads()}


def machine(device: str, options: Options) -> dict[str, Any]:
    """The version, how peak memory is measured, and the GPU's name."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "peak_mem_method": {
            "torch": "torch.cuda.max_memory_allocated above the level before" if _on_gpu(device) else _host_method()
        },
    }
    if _on_gpu(device):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _host_method() -> str:
    from parity.bench.measure import host_peak_method

    return host_peak_method()


def release(device: str) -> None:
    """What the rows cached on the GPU goes back before the next setting."""
    if _on_gpu(device):
        torch.cuda.empty_cache()


def memory_mb(device: str) -> float | None:
    """The GPU's memory (None on the CPU)."""
    if not _on_gpu(device):
        return None
    return float(torch.cuda.get_device_properties(0).total_memory / 2**20)


def profile(setting: Setting, row: str = "torch", steps: int = 10, table_rows: int = 15) -> str:
    """``torch.profiler``'s table (self CPU time) for ``steps`` outer steps of a row on the CPU."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    torch.set_num_threads(1)
    prep = {r.name: r for r in rows()}[row].prepare(setting, "cpu", Options(min_call_s=0.0))
    prep.call()
    with profiler(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(max(1, steps // prep.steps)):
            prep.call()
    return str(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=table_rows))
