"""Profiling helpers behind docs/performance.md: what XLA runs, and where PyTorch spends its time."""

from __future__ import annotations

import re
from typing import Any

from parity.bench.runners import prepare, prepare_jax
from parity.bench.settings import Setting


def jax_hlo_summary(setting: Setting, unroll: int = 0, steps: int = 10) -> dict[str, Any]:
    """What XLA runs for one compiled ``train_chunk``: ops per computation, compile time.

    XLA CPU executes every op left after fusion (fusion, dot, copy, while, ...) as its own
    "thunk"; at these sizes their number, not the arithmetic, sets the time per step. ``ops``
    maps each computation that is not a fusion's body (the entry, the outer and inner loops'
    bodies and conditions) to its op counts. ``unroll`` is ``train_chunk``'s static argument.
    """
    prep = prepare_jax(setting, "cpu", steps, unroll)
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


def torch_profile(setting: Setting, impl: str = "torch", steps: int = 10, rows: int = 15) -> str:
    """``torch.profiler``'s table (self CPU time) for ``steps`` outer steps of a PyTorch row on the CPU."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    prep = prepare(impl, setting, "cpu", min_call_s=0.0)
    prep.call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(max(1, steps // prep.steps)):
            prep.call()
    return str(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
