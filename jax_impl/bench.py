"""The JAX twin's bench rows, probes and cost analysis (``maml-parity bench``; parity.bench.rows).

- ``jax`` / ``jax-unrolled`` / ``jax-cpu``: ``jax_impl.train.train_chunk``, a chunk of ``n``
  outer steps per call, compiled ahead of time (trace + lower + XLA compile reported apart as
  ``compile_s``), tasks pre-sampled as device arrays; ``unroll`` passed as the static argument of
  ``train_chunk`` (jax-unrolled: unroll = T). jax-cpu: the same on the host's CPU in a GPU run.
- The device's peak: a large float32 matmul in full precision (``Precision.HIGHEST``: no TF32 or
  bf16 passes), in FLOP/s, and an elementwise ``x + 1`` over a large array (one read and one
  write per element), in bytes/s; each the best of a few calls: a peak, not a typical figure.
- FLOPs and bytes of one outer step: XLA's cost analysis of ``train_step`` compiled for the
  bench's device with the inner loop unrolled (a rolled loop's body would be counted once,
  whatever its trip count); ``parity.bench.measure.step_cost`` extrapolates them in T and B.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from parity.bench.measure import Prepared, host_peak
from parity.bench.rows import ACCELERATOR, BenchRow, Options, Target, optimizer_ratio, remat_ratio, row_value
from parity.bench.settings import (
    ADAM_BATCH_POINT,
    BIG_BATCH_POINT,
    REMAT_B,
    REMAT_T,
    SEED_ALPHA_POINT,
    SMALL_B_GPU,
    Setting,
)

UNROLLED_MAX_T = 20  # straight-line code for 100 steps: long compiles, nothing new


def chunk_length(setting: Setting) -> int:
    """Outer steps per compiled call: enough to amortise dispatch, few when a step is long."""
    work = setting.B * max(setting.T, 1) * (setting.width / 32) ** 2
    return int(min(500, max(1, math.ceil(20_000 / work))))


def _twin(cfg: Any, device: str) -> Any:
    from parity.twins import load

    return load("jax", cfg.dtype, device)


def prepare(setting: Setting, device: str, steps: int | None = None, unroll: int = 0) -> Prepared:
    """Compile ``train_chunk`` for ``steps`` outer steps ahead of time; the call runs it once."""
    from parity.init import init_alpha, init_params
    from parity.tasks import sample_batches

    cfg = setting.cfg()
    twin = _twin(cfg, device)
    steps = steps or chunk_length(setting)
    state = twin.train.init_state(
        twin.to_arrays(init_params(cfg), cfg.dtype), twin.to_arrays(init_alpha(cfg), cfg.dtype), cfg
    )
    tasks = jax.block_until_ready(
        twin.to_arrays(tuple(sample_batches(cfg, 0, steps)[:4]), cfg.dtype)
    )  # 4 × [N, B, P, 1]
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
        "jax_device": str(twin.model.resolve_device(device)),
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
    peak = xla_peak(extra, rss=twin.model.resolve_device(device).platform == "cpu")
    return Prepared(call, steps, compile_s=t2 - t0, peak=peak, extra=extra, compiled=compiled)


def xla_peak(extra: dict[str, Any], rss: bool) -> Callable[[], contextlib.AbstractContextManager[dict[str, float]]]:
    """What the executable declares (``extra["xla_total_mb"]``); the RSS delta goes in extra."""

    @contextlib.contextmanager
    def peak() -> Iterator[dict[str, float]]:
        out: dict[str, float] = {}
        measured: contextlib.AbstractContextManager[dict[str, float]] = (
            host_peak() if rss else contextlib.nullcontext({})
        )
        with measured as host:
            yield out
        if "mb" in host:
            extra["rss_peak_mb"] = host["mb"]
        out["mb"] = float(extra.get("xla_total_mb", float("nan")))

    return peak


def rows() -> tuple[BenchRow, ...]:
    """``jax`` (the run's unroll), ``jax-unrolled`` (unroll = T, small B) and ``jax-cpu`` (an accelerator
    run's B = 1 point on the host's CPU: the "no slower than the CPU" goal)."""
    return (
        BenchRow("jax", lambda s, d, o: prepare(s, d, o.chunk, o.unroll)),
        BenchRow(
            "jax-unrolled",
            lambda s, d, o: prepare(s, d, o.chunk, max(s.T, 1)),
            default_on=frozenset({ACCELERATOR}),
            remat=False,
            max_B=SMALL_B_GPU,
            max_B_accelerator=SMALL_B_GPU,
            max_T=UNROLLED_MAX_T,
        ),
        BenchRow(
            "jax-cpu",
            lambda s, d, o: prepare(s, "cpu", o.chunk, o.unroll),
            default_on=frozenset({ACCELERATOR}),
            only_at=SEED_ALPHA_POINT,
            accelerator_only=True,
        ),
    )


def targets() -> tuple[Target, ...]:
    """Issue 4's CPU goals and issue 10's GPU goals for the JAX rows."""

    def gpu_over_cpu(find: Callable[[str, Setting], Any]) -> float | None:
        gpu, cpu = find("jax", SEED_ALPHA_POINT), find("jax-cpu", SEED_ALPHA_POINT)
        return gpu.us_per_step / cpu.us_per_step if gpu and cpu else None

    batch, maml = Setting("seed-alpha", T=5, B=25, width=32), Setting("seed-maml", 3, 1, 32)
    return (
        Target(
            "jax speedup vs seed loop per outer step, seed-alpha B=1 T=5",
            row_value("jax", SEED_ALPHA_POINT, "speedup_vs_seed_loop"),
            ">=",
            75,
        ),
        Target("jax us per task-step, B=25 T=5", row_value("jax", batch, "us_per_task_step"), "<=", 15),
        Target("jax compile s, seed-alpha", row_value("jax", SEED_ALPHA_POINT, "compile_s"), "<=", 2),
        Target("jax compile s, seed-maml", row_value("jax", maml, "compile_s"), "<=", 2),
        Target(
            f"jax peak memory without / with remat, T={REMAT_T} B={REMAT_B}",
            remat_ratio("jax", Setting("seed-alpha", REMAT_T, REMAT_B, 32)),
            ">=",
            5,
        ),
        Target(
            "jax adam / sgd inner loop, time per step, B=25 T=5",
            optimizer_ratio("jax", ADAM_BATCH_POINT),
            "<=",
            1.5,
        ),
        Target("jax on the gpu / jax on the host cpu, time per step, B=1 T=5", gpu_over_cpu, "<=", 1, True),
        Target(
            "jax us per step, B=65536 T=5 (stretch)",
            row_value("jax", BIG_BATCH_POINT, "us_per_step"),
            "<=",
            15_000,
            True,
        ),
    )


# --- the run: threads and flags before the backend starts, what the machine is -------------------


def configure(device: str, threads: int) -> dict[str, Any]:
    """XLA reads XLA_FLAGS once, when its backend starts: one thread on the CPU is the single-threaded
    eigen pool; on an accelerator JAX allocates as it needs instead of taking 75% of the memory up
    front, so that the other twin's rows in the same process have room."""
    started = backend_started()
    if not started and threads == 1 and device == "cpu":
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    if not started and device != "cpu":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return {"xla_flags": os.environ.get("XLA_FLAGS", ""), "xla_flags_applied": not started}


def backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # private API moved: assume the worst
        return True


def machine(device: str, options: Options) -> dict[str, Any]:
    """Versions, the backend, how peak memory and FLOPs are counted, the unroll of the jax rows."""
    info: dict[str, Any] = {
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "peak_mem_method": {"jax": "XLA executable's buffers: temp + arguments + outputs (compiled.memory_analysis())"},
        "flops_method": (
            "per outer step, XLA's cost analysis of the JAX twin's train_step compiled for this device "
            "(flops and 'bytes accessed'); the same counts credit every row of a setting, PyTorch rows included"
        ),
        "jax_unroll": options.unroll,
    }
    with contextlib.suppress(ImportError):
        import optax

        info["optax"] = optax.__version__
    return info


def start_backend() -> dict[str, float]:
    """Start the backend with a trivial compile, so the first row's compile_s is its own."""
    t = time.perf_counter()
    jax.block_until_ready(jax.jit(lambda x: jnp.tanh(x) @ x)(jnp.ones((4, 4))))
    return {"jax_backend_init_s": time.perf_counter() - t}


# --- the device's peak --------------------------------------------------------------------------


def _device(device: str) -> Any:
    from jax_impl.model import resolve_device

    return resolve_device(device)


def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # compile and warm up
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_probe(device: str = "cpu", n: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """FLOP/s of an ``n × n`` float32 matmul in full precision (``2n³`` FLOPs), best of ``repeats``."""
    n = n or (1024 if device == "cpu" else 8192)
    dev = _device(device)
    a = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32), dev)
    b = jax.device_put(jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32), dev)
    f = jax.jit(lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST))
    seconds = _best_time(lambda: jax.block_until_ready(f(a, b)), repeats)
    return {"n": n, "dtype": "float32", "precision": "highest", "seconds": seconds, "flop_per_s": 2 * n**3 / seconds}


def copy_probe(device: str = "cpu", mb: float | None = None, iterations: int = 10, repeats: int = 5) -> dict[str, Any]:
    """Bytes/s of ``x ← x + 1`` over ``mb`` MiB of float32, ``iterations`` times in one call (read + write)."""
    mb = mb or (64.0 if device == "cpu" else 1024.0)
    size = int(mb * 2**20) // 4
    x = jax.device_put(jnp.zeros((size,), jnp.float32), _device(device))
    # A loop XLA cannot fuse across: every iteration reads and writes the whole array.
    f = jax.jit(lambda x: jax.lax.fori_loop(0, iterations, lambda _, v: v + 1.0, x))
    seconds = _best_time(lambda: jax.block_until_ready(f(x)), repeats)
    moved = 2 * 4 * size * iterations
    return {"mib": mb, "iterations": iterations, "seconds": seconds, "bytes_per_s": moved / seconds}


def device_peaks(device: str) -> dict[str, Any]:
    """Both probes, for the JSON's machine section and the table's % of peak."""
    return {"matmul": matmul_probe(device), "copy": copy_probe(device)}


# --- FLOPs and bytes of one outer step ------------------------------------------------------------


def _cost_dict(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


@functools.lru_cache(maxsize=64)
def step_cost_exact(setting: Setting, device: str = "cpu") -> dict[str, float]:
    """XLA's counts for one outer step (``train_step``), inner loop unrolled, compiled at ``setting``."""
    import dataclasses

    from parity.init import init_alpha, init_params
    from parity.tasks import sample_batches

    cfg = dataclasses.replace(setting, remat=False).cfg()
    twin = _twin(cfg, device)
    state = twin.train.init_state(
        twin.to_arrays(init_params(cfg), cfg.dtype), twin.to_arrays(init_alpha(cfg), cfg.dtype), cfg
    )
    tasks = twin.to_arrays(tuple(sample_batches(cfg, 0, 1)[:4]), cfg.dtype)
    tasks = tuple(t[0] for t in tasks)  # one step: [B, P, 1]
    step = jax.jit(twin.train.train_step, static_argnames=("cfg", "unroll"))
    compiled = step.lower(state, tasks, cfg, unroll=max(cfg.inner_steps, 1)).compile()
    cost = _cost_dict(compiled)
    return {"flops": float(cost.get("flops", math.nan)), "bytes": float(cost.get("bytes accessed", math.nan))}


def hlo_summary(setting: Setting, unroll: int = 0, steps: int = 10) -> dict[str, Any]:
    """What XLA runs for one compiled ``train_chunk``: ops per computation, compile time.

    XLA CPU executes every op left after fusion (fusion, dot, copy, while, ...) as its own
    "thunk"; at these sizes their number, not the arithmetic, sets the time per step. ``ops``
    maps each computation that is not a fusion's body (the entry, the outer and inner loops'
    bodies and conditions) to its op counts. ``unroll`` is ``train_chunk``'s static argument.
    """
    prep = prepare(setting, "cpu", steps, unroll)
    text = prep.compiled.as_text()
    called = set(re.findall(r"(?:calls|to_apply)=(%[\w.\-]+)", text))
    skip = ("parameter", "get-tuple-element", "tuple", "constant", "bitcast")
    ops: dict[str, dict[str, int]] = {}
    current = ""
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?(%[\w.\-]+) ", line)
        if head:
            current = head.group(1)
            continue
        op = re.match(r"\s+(?:ROOT )?%[\w.\-]+ = .*? ([a-z][\w\-]*)\(", line)
        if op and current not in called and op.group(1) not in skip:
            counts = ops.setdefault(current, {})
            counts[op.group(1)] = counts.get(op.group(1), 0) + 1
    return {"setting": setting.label, "unroll": unroll, "compile_s": prep.compile_s, **prep.extra, "ops": ops}
