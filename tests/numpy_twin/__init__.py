"""A third built-in twin for the tests: the NumPy oracle (``parity.oracle``) wrapped as a framework
package, with the same roles as ``jax_impl`` / ``torch_impl`` (adapter, model, meta, train).

Float64 only. It exists to prove that nothing in ``parity/`` assumes exactly two twins: a test
registers it with :func:`register` (``parity.registry.BUILTINS`` / ``TWINS`` patched for that test)
and runs check, train, eval, report and demo through it.
"""

from __future__ import annotations

NAME = "oracle"
ADAPTER = "numpy_twin.adapter:OracleTwin"
