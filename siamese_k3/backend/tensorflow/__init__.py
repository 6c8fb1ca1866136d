"""TensorFlow as siamese_k3 drives it: compile defaults, array batches without tf.data's autotuning, cancellation.

- ``steps_per_execution=32`` amortises `fit`'s per-step Python work over 32
  batches, and ``jit_compile=True`` compiles the step with XLA, also on the
  CPU where keras' ``"auto"`` leaves it off (benchmarks/RESULTS.md); not for a
  model with a layer that does not support XLA (keras would warn and fall
  back), nor under tf.distribute, where keras' ``"auto"`` leaves XLA off,
  nor for a model that draws random numbers (Dropout, noise, augmentation),
  which XLA would draw differently from keras' default.
  A `fit` whose callbacks have batch hooks runs one step per execution
  (`FastPath.execution_scope`); keras' progress bar, which would count the
  last execution of an epoch past its end, is `fast_path.EpochProgbarLogger`
  (`fast_path.progress_bar_callbacks`).
- `arrays`: for in-memory arrays, keras' own tf.data pipeline with tf.data's
  autotuning off, in one private thread, which on a small CPU no longer
  competes with the step.
- `TensorFlowBackend.cancellable`: TensorFlow runs a compiled function (up to
  32 training steps on the fast path, a collective waiting for its peers) in
  native code, where Python's signal handlers wait for it to return. Inside
  this block another thread can cancel the running function: it fails at its
  next step (a ``tf.errors.CancelledError``), after which the handler runs. One
  XLA cluster (one jit-compiled step) runs to its end.

Data-parallel training: `siamese_k3.backend.distributed.tf_engine` (tf.distribute).
"""

import contextlib

from siamese_k3.backend import distributed, fast_path
from siamese_k3.backend.base import Backend
from siamese_k3.backend.tensorflow import arrays


class TensorFlowBackend(Backend):
    """keras' TensorFlow trainer with XLA, 32 steps per execution and untuned array batches; tf.distribute."""

    name = "tensorflow"

    def compile_defaults(self, model, run_eagerly):
        if run_eagerly:
            return 1, "auto"
        steps = min(32, distributed.max_steps_per_execution())
        xla = (
            distributed.current() is None
            and all(getattr(layer, "supports_jit", True) for layer in model._flatten_layers())
            and not draws_random_numbers(model)
        )
        return steps, True if xla else "auto"

    def fit_input(self, model, x, y, fit_kwargs):
        return fast_path.adapt_arrays(arrays.array_dataset, model, x, y, fit_kwargs)

    def callbacks(self, model, x, callbacks, verbose, epochs, steps_per_epoch):
        return fast_path.progress_bar_callbacks(model, callbacks, verbose)

    def engine(self, timeout_seconds=600):
        from siamese_k3.backend.distributed.tf_engine import TensorFlowEngine

        return TensorFlowEngine(timeout_seconds=timeout_seconds)

    @contextlib.contextmanager
    def cancellable(self):
        """A block yielding `cancel`, which fails its running TensorFlow function from any thread (see the module).

        Uses TensorFlow's eager `CancellationManager` (``tensorflow.python.eager.cancellation``,
        not a public API: ``tests/test_interrupts.py`` checks it is there); without it, None.
        """
        try:
            from tensorflow.python.eager import cancellation

            active, Manager = cancellation.context, cancellation.CancellationManager
            Scope = cancellation.CancellationManagerContext
        except (ImportError, AttributeError):  # a TensorFlow without it: the grace period alone
            yield None
            return
        if active() is not None:  # an enclosing block's manager is in charge
            yield None
            return
        manager = Manager()
        with Scope(manager):
            yield manager.start_cancel


def draws_random_numbers(model):
    """Whether `model` holds a keras `SeedGenerator` (Dropout, GaussianNoise, random augmentation, ...).

    TensorFlow's random ops draw other numbers from the same seed under XLA than
    without it, so such a model would train with other dropout masks than keras'
    own default (XLA off on the CPU) gives it: XLA then stays at keras' ``"auto"``.
    """
    return any(variable.name == "seed_generator_state" for variable in model.variables)
