"""JAX as siamese_k3 drives it: its fast path (compile defaults only) and its data-parallel engine.

keras' JAX trainer already runs each step as one jitted XLA computation; what
remains per step is Python's round trip between steps (callbacks, iterator,
dispatch). ``steps_per_execution=32`` amortises it over 32 batches
(benchmarks/RESULTS.md), with jit left at keras' ``"auto"`` (XLA). Batch-level
callbacks then see one call per 32 batches, so a `fit` whose callbacks have
batch hooks runs one step per execution (`FastPath.execution_scope`), and
keras' progress bar, which would count the last execution of an epoch past its
end, is `fast_path.EpochProgbarLogger` (`fast_path.progress_bar_callbacks`).
Data-parallel training: `siamese_k3.backend.distributed.jax_engine`.
"""

from siamese_k3.backend import distributed, fast_path
from siamese_k3.backend.base import Backend


class JaxBackend(Backend):
    """keras' JAX trainer with 32 steps per execution by default; `keras.distribution` for data parallelism."""

    name = "jax"

    def compile_defaults(self, model, run_eagerly):
        if run_eagerly:
            return 1, "auto"
        return min(32, distributed.max_steps_per_execution()), "auto"

    def callbacks(self, model, x, callbacks, verbose, epochs, steps_per_epoch):
        return fast_path.progress_bar_callbacks(model, callbacks, verbose)

    def engine(self, timeout_seconds=600):
        from siamese_k3.backend.distributed.jax_engine import JaxEngine

        return JaxEngine(timeout_seconds=timeout_seconds)
