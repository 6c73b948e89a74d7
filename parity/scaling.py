"""``maml-parity bench --scaling``: training throughput against the number of devices.

Strong scaling keeps the meta-batch fixed (``B``) and splits it over 1, 2, 4, … devices; weak
scaling grows it with them (``b`` tasks per device). The twin whose adapter has the capability
``scaling`` measures (its ``scaling_measure``: the sharded training step ``train --devices N``
runs); each device count runs in a subprocess of its own, with the environment the adapter gives
it (``scaling_environment``: on a CPU, forced host devices, which share the machine's cores, so
this measures how well the per-device work spreads over them: it cannot scale past the core count).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parity.config import ConfigError

DEVICE_COUNTS = (1, 2, 4)


def scaling_twin() -> Any:
    """The first built-in twin that offers the scaling measurement."""
    from parity.registry import TWINS
    from parity.twins import SCALING, load

    for name in TWINS:
        twin = load(name, check_device=False)
        if SCALING in twin.capabilities:
            return twin
    raise ConfigError("scaling", "no built-in twin offers the scaling measurement")


def measure(devices: int, meta_batch: int, inner_steps: int, steps: int, repeats: int) -> dict[str, Any]:
    """Time the sharded training step on ``devices`` devices (runs in the child process)."""
    return dict(scaling_twin().scaling_measure(devices, meta_batch, inner_steps, steps, repeats))


def run_scaling(
    device: str = "cpu",
    counts: Sequence[int] = DEVICE_COUNTS,
    strong_batch: int = 256,
    weak_batch: int = 64,
    inner_steps: int = 5,
    steps: int = 20,
    repeats: int = 5,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Strong and weak scaling rows, each device count measured in its own subprocess."""
    rows = []
    for mode in ("strong", "weak"):
        base = None
        for n in counts:
            B = strong_batch if mode == "strong" else weak_batch * n
            if B % n:
                raise ConfigError("devices", f"strong scaling needs B = {strong_batch} divisible by {n}")
            row = {"mode": mode, **_child(device, n, B, inner_steps, steps, repeats)}
            base = base or row
            # strong: time at 1 device / time at n; weak: throughput at n / (n × throughput at 1)
            row["speedup"] = row["tasks_per_s"] / base["tasks_per_s"]
            row["efficiency"] = row["speedup"] / n
            rows.append(row)
            if progress is not None:
                progress(scaling_line(row))
    return {"machine": _machine(device), "rows": rows}


def _child(device: str, devices: int, meta_batch: int, inner_steps: int, steps: int, repeats: int) -> dict[str, Any]:
    env = scaling_twin().scaling_environment(device, devices, os.environ)
    code = (
        "import json, sys; from parity.scaling import measure; "
        f"print(json.dumps(measure({devices}, {meta_batch}, {inner_steps}, {steps}, {repeats})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError("devices", f"the {devices}-device run failed: {last}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _machine(device: str) -> dict[str, Any]:
    import platform

    from parity.checkpoint import library_versions

    return {
        "device": device,
        "twin": scaling_twin().framework,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": library_versions(),
    }


SCALING_HEADER = (
    f"{'mode':<7} {'devices':>7} {'B':>6} {'µs/step':>10} {'tasks/s':>10} {'speedup':>8} {'efficiency':>10}"
)


def scaling_line(row: dict[str, Any]) -> str:
    return (
        f"{row['mode']:<7} {row['devices']:>7} {row['B']:>6} {row['us_per_step']:>10,.0f} {row['tasks_per_s']:>10,.0f} "
        f"{row['speedup']:>7.2f}x {row['efficiency']:>9.0%}"
    )


def write_scaling_plot(result: dict[str, Any], path: Path) -> None:
    """Tasks per second against devices, strong and weak, with the ideal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, mode in zip(axes, ("strong", "weak"), strict=True):
        rows = [r for r in result["rows"] if r["mode"] == mode]
        n = np.array([r["devices"] for r in rows])
        tps = np.array([r["tasks_per_s"] for r in rows])
        ax.plot(n, tps, "o-", label="measured")
        ax.plot(n, tps[0] * n, "k--", lw=1, label="ideal (linear)")
        batch = f"B = {rows[0]['B']}" if mode == "strong" else f"B = {rows[0]['B']} per device"
        ax.set_title(f"{mode} scaling ({batch}, T = {rows[0]['T']})")
        ax.set_xlabel("devices")
        ax.set_ylabel("tasks per second")
        ax.set_xticks(n)
        ax.grid(alpha=0.3)
        ax.legend()
    m = result["machine"]
    fig.suptitle(
        f"{m.get('twin', '')} twin, sharded meta-batch: {m['device']}, {m['cpu_count']} CPU cores, {m['date']}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
