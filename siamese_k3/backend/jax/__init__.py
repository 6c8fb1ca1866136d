"""The fast path on JAX: compile defaults only.

keras' JAX trainer already runs each step as one jitted XLA computation; what
remains per step is Python's round trip between steps (callbacks, iterator,
dispatch). ``steps_per_execution=32`` amortises it over 32 batches
(benchmarks/RESULTS.md), with jit left at keras' ``"auto"`` (XLA). Batch-level
callbacks then see one call per 32 batches, so a `fit` whose callbacks have
batch hooks runs one step per execution (`FastPath.execution_scope`).
"""

from siamese_k3.backend import distributed
from siamese_k3.backend.fast_path import FastPath


class JaxPath(FastPath):
    """keras' JAX trainer with 32 steps per execution by default."""

    name = "jax"

    def compile_defaults(self, model, run_eagerly):
        if run_eagerly:
            return 1, "auto"
        return min(32, distributed.max_steps_per_execution()), "auto"
