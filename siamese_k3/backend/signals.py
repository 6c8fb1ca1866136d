"""SIGTERM back from the native runtimes that take it (used by the data-parallel engines).

Stopping a running compiled function on a signal is each backend's own
(`siamese_k3.backend.base.Backend.cancellable`; TensorFlow's cancels it).

- `reclaim_sigterm()`: TensorFlow's multi-worker runtime and JAX's preemption
  service install a native SIGTERM handler that only records a preemption
  notice, so SIGTERM no longer stops the process. siamese_k3 does not use those
  notices; this puts Python's handler (or the default action) back.
"""

import signal
import threading


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
