"""The oracle twin behind the contract (mirrors jax_impl/adapter.py's role): NumPy, float64, one CPU."""

from __future__ import annotations

from typing import Any

from numpy_twin import meta, model, train
from parity.config import Config, ConfigError
from parity.twins import TwinAdapter


class OracleTwin(TwinAdapter):
    """The NumPy oracle as a twin: complex-step meta-gradients, NumPy SGD / Adam outside."""

    framework = "oracle"
    model = model
    meta = meta
    train = train

    def prepare(self, dtype: str) -> None:
        model.check_dtype(dtype)

    def set_threads(self, threads: int) -> str:
        return "oracle: NumPy's own BLAS threads"  # NumPy reads its thread count once, at import

    def placement(
        self,
        cfg: Config,
        devices: int | None = None,
        coordinator: str | None = None,
        num_processes: int | None = None,
        process_id: int | None = None,
    ) -> Any:
        if devices not in (None, 1) or coordinator is not None or (num_processes or 1) > 1:
            raise ConfigError(
                "devices", "the oracle twin trains in one process on one CPU; drop --devices / --coordinator"
            )
        return None
