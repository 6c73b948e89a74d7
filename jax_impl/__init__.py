"""The JAX twin: jax.grad over jit-compiled lax.scan loops, vmap over tasks, optax optimisers."""
