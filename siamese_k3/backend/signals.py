"""What each backend needs so that SIGINT and SIGTERM can stop it (used by `siamese_k3.runs.interrupts`).

- `cancellable()`: TensorFlow runs a compiled function (up to 32 training
  steps on the fast path, a collective waiting for its peers) in native code,
  where Python's signal handlers wait for it to return. Inside this block another
  thread can cancel the running function: it fails at its next step (a
  ``tf.errors.CancelledError``), after which the handler runs. One XLA cluster
  (one jit-compiled step) runs to its end. JAX and PyTorch: nothing to cancel.
- `reclaim_sigterm()`: TensorFlow's multi-worker runtime and JAX's preemption
  service install a native SIGTERM handler that only records a preemption
  notice, so SIGTERM no longer stops the process. siamese_k3 does not use those
  notices; this puts Python's handler (or the default action) back.
"""

import contextlib
import signal
import threading


@contextlib.contextmanager
def cancellable():
    """A block yielding `cancel`, which fails its running TensorFlow function from any thread; None elsewhere.

    Uses TensorFlow's eager `CancellationManager` (``tensorflow.python.eager.cancellation``,
    not a public API: ``tests/test_interrupts.py`` checks it is there); without it, None.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        yield None
        return
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


def reclaim_sigterm():
    """Give SIGTERM back to Python's handler (or the default action) after a native library took it.

    Python still reports the handler it installed (`signal.getsignal`);
    installing it again restores it at the native level. Main thread only (a
    no-op elsewhere), as any `signal.signal`.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL if handler is None else handler)
