"""Stop a training run on SIGINT or SIGTERM within seconds, on every backend, with an exception.

    with stop_on_signals() as stop:
        model.fit(batches, epochs=100, callbacks=[stop.callback, *callbacks])  # stop.callback first
        model.save(path)
    # raises RunInterrupted (a KeyboardInterrupt) when a signal arrived inside the block

Inside the block the first SIGINT or SIGTERM raises `RunInterrupted`, which
names the signal and the exit code a command line reports (128 + the signal
number: 130, 143). What makes that reliable, and why each part is there:

1. The handler raises at once, as Python's own Ctrl-C does. That is enough on
   PyTorch, and outside `fit` everywhere.
2. keras may swallow that exception. Its `pythonify_logs` (run by every callback
   list before each batch and epoch hook) reads the step's logs to host inside
   a bare ``except: pass`` (keras 3.15, `keras.src.utils.python_utils`). On
   JAX, dispatch is asynchronous: that read is where the main thread waits for
   each compiled step, so a signal often lands there and the interrupt
   vanishes (10 of 11 Ctrl-C in the reported run); training goes on. The handler therefore also
   sets ``model.stop_training`` (and ``stop_evaluating`` during `fit`'s
   validation), which keras checks after every compiled call, and
   `stop.callback` raises again from hooks that come before anything is
   saved: ``on_epoch_end`` (put the callback first, ahead of checkpoints),
   ``on_test_begin``/``on_test_end`` (validation), ``on_epoch_begin``,
   ``on_train_begin``. It has no batch hooks, so keras dispatches callbacks
   as it would without it and the fast path keeps its steps per execution.
   And when the block ends normally after a signal, its exit raises.
3. A compiled call holds the main thread in native code, where no Python
   handler runs: one TensorFlow call runs up to 32 steps (the fast path), and a
   collective waits for its peers. A watchdog thread learns of each signal at
   once through `signal.set_wakeup_fd`; if the block is still running a second
   later, it cancels the running TensorFlow function
   (`siamese_k3.backend.base.Backend.cancellable`: it fails at its next step, and
   the block raises). If the block still has not ended `grace_seconds` after
   the signal (a peer that never answers, a long JAX or XLA step), the
   watchdog writes one line to stderr and ends the process with
   ``os._exit(128 + signal)``: no cleanup, no further files written.
4. A second signal while stopping ends the process the same way at once
   (signals within a second of the first count as one: Ctrl-C reaches the
   whole process group, and a launcher such as torchrun forwards SIGTERM too).

Only the main thread receives signals in Python: entered from another thread
the block is a no-op (no handlers, `stop.callback` never raises). On exit the
previous handlers and wakeup fd are restored. A process forked inside the
block (multiprocessing workers) gets the previous handlers back.
"""

import os
import signal
import threading
import time

from siamese_k3.errors import RunInterrupted, signal_name  # noqa: F401 (RunInterrupted: raised here)

DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STOP_WATCHING = 0  # the byte the block's exit writes to end the watchdog (no signal has number 0)
CANCEL_AFTER_SECONDS = 1.0  # a TensorFlow call still running this long after the signal is cancelled
BURST_SECONDS = 1.0  # signals this close to the first are the same request to stop


class stop_on_signals:
    """A block in which `signals` raise `RunInterrupted` (see the module for how, and why).

    Args:
        signals: the signals that stop the block (SIGINT and SIGTERM).
        grace_seconds: how long after the first signal the block may take to
            end before the process exits without cleanup (``os._exit(128 +
            signal)``, after one line on stderr); None: never (only a second
            signal does).

    Attributes:
        callback: a keras callback for every `fit` (first in its list), `evaluate`
            and `predict` inside the block; it raises where keras has swallowed
            the interrupt.
        received: the first signal received inside the block, or None.

    Raises:
        RunInterrupted: from inside the block, or at its end when a signal
            arrived and the block went on (the interrupt was swallowed).
    """

    def __init__(self, signals=DEFAULT_SIGNALS, grace_seconds=10.0):
        self.signals = tuple(signal.Signals(signum) for signum in signals)
        self.grace_seconds = grace_seconds
        self.received = None
        self.callback = _stop_callback(self)
        self._active = False
        self._previous = {}
        self._previous_wakeup = -1
        self._pipe = None
        self._watchdog = None
        self._inside = threading.Event()
        self._cancel_scope = None
        self._cancel = None
        self._first_at = None  # when the first signal arrived (time.monotonic)

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only: a no-op
        from siamese_k3.backend import registry

        self.received = self._first_at = None
        self._cancel_scope = registry.current().cancellable()
        self._cancel = self._cancel_scope.__enter__()
        self._previous = {signum: signal.getsignal(signum) for signum in self.signals}
        self._active = True
        _ACTIVE.append(self)
        try:
            self._start_watchdog()
            for signum in self.signals:
                signal.signal(signum, self._handle)
        except BaseException:  # a previous handler raised for a signal that arrived just now
            self._leave()
            raise
        self._inside.set()  # a signal before this is recorded: the callback and the exit raise
        return self

    def __exit__(self, kind, error, traceback):
        if not self._active:
            return False
        self._leave()
        if self.received is None or isinstance(error, RunInterrupted):
            return False
        if error is None or isinstance(error, Exception) or type(error) is KeyboardInterrupt:
            # The block went on after the signal (the interrupt was swallowed), or failed
            # because of it (a cancelled TensorFlow call): report the interrupt.
            raise RunInterrupted(self.received) from error
        return False

    def _leave(self):
        self._inside.clear()  # from here on the handler records a signal without raising
        self._active = False
        _ACTIVE.remove(self)
        try:
            self._restore()
        finally:
            self._cancel_scope.__exit__(None, None, None)

    def check(self):
        """Raise `RunInterrupted` if a signal has arrived inside the block."""
        if self.received is not None and self._active:
            raise RunInterrupted(self.received)

    # -- in the main thread -------------------------------------------------

    def _handle(self, signum, frame):
        if self.received is not None:
            self._again(signum)
            return
        self.received = signum
        self._first_at = self._first_at or time.monotonic()
        model = self.callback.trained
        if model is not None:  # keras leaves fit (and fit's validation) after the running compiled call
            model.stop_training = True
            if self.callback.validating:
                model.stop_evaluating = True
        if self._inside.is_set():  # not while the block restores the handlers: its exit raises
            raise RunInterrupted(signum)

    def _restore(self):
        """The previous handlers and wakeup fd back, the watchdog ended; then any exception a
        previous handler raised meanwhile (`signal.signal` first runs the handlers of pending signals)."""
        raised = []
        for signum, handler in self._previous.items():
            handler = signal.SIG_DFL if handler is None else handler  # None: installed outside Python
            try:
                signal.signal(signum, handler)
            except BaseException as error:  # a restored handler ran for a signal that had just arrived
                raised.append(error)
                signal.signal(signum, handler)
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            os.write(self._pipe[1], bytes([_STOP_WATCHING]))
            self._watchdog.join(timeout=5)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = self._watchdog = None
        if raised:
            raise raised[0]

    def _start_watchdog(self):
        try:
            read, write = os.pipe()
        except OSError:
            return
        os.set_blocking(write, False)
        try:
            self._previous_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        except (ValueError, OSError):  # a platform whose wakeup fd must be a socket: no watchdog
            os.close(read)
            os.close(write)
            return
        self._pipe = (read, write)
        self._watchdog = threading.Thread(target=self._watch, name="siamese_k3 stop_on_signals", daemon=True)
        self._watchdog.start()

    # -- in the watchdog thread ---------------------------------------------

    def _watch(self):
        import select

        read = self._pipe[0]
        first = None  # the first signal
        deadlines = {}  # "cancel" and "exit": monotonic times of what to do if the block is still running
        while True:
            timeout = max(0.0, min(deadlines.values()) - time.monotonic()) if deadlines else None
            ready, _, _ = select.select([read], [], [], timeout)
            if not ready:
                if not self._inside.is_set():
                    return
                now = time.monotonic()
                if deadlines.get("cancel", now + 1) <= now:
                    del deadlines["cancel"]
                    self._cancel()
                if deadlines.get("exit", now + 1) <= now:
                    _exit_now(first, f"still running {self.grace_seconds:g} s after the signal")
                continue
            data = os.read(read, 64)
            if not data or _STOP_WATCHING in data:
                return
            self._forward(data)
            for signum in data:
                if signum not in self.signals or not self._inside.is_set():
                    continue
                if first is not None:
                    self._again(signum)
                    continue
                first, now = signum, time.monotonic()
                self._first_at = self._first_at or now
                if self._cancel is not None:
                    deadlines["cancel"] = now + CANCEL_AFTER_SECONDS
                if self.grace_seconds is not None:
                    deadlines["exit"] = now + self.grace_seconds

    def _again(self, signum):
        """A signal after the first: the end at once, unless it came with the first (a burst: the
        terminal's Ctrl-C to the process group and a launcher's SIGTERM, torchrun's, together)."""
        if time.monotonic() - (self._first_at or 0.0) >= BURST_SECONDS:
            _exit_now(signum, "a second signal while stopping")

    def _forward(self, data):
        """Pass the bytes on to the wakeup fd that was set before the block (an event loop's).

        Not to an enclosing block's: its handler is not the one called, and its watchdog stays out of it.
        """
        enclosing = [other._pipe[1] for other in _ACTIVE if other is not self and other._pipe is not None]
        if self._previous_wakeup >= 0 and self._previous_wakeup not in enclosing:
            try:
                os.write(self._previous_wakeup, data)
            except OSError:
                pass


_EXITING = threading.Lock()


def _exit_now(signum, why):
    """One line on stderr, then end the process with 128 + `signum`, without cleanup (any thread, once)."""
    _EXITING.acquire()  # a second caller (the handler and the watchdog both saw the signal) waits for the end
    message = f"siamese_k3: stopped by {signal_name(signum)} ({why}); exiting without cleanup.\n"
    try:
        os.write(2, message.encode())
    finally:
        os._exit(128 + int(signum))


def _stop_callback(stopper):
    """A `keras.callbacks.Callback` that raises `RunInterrupted` where keras may have swallowed it."""
    import keras

    class StopOnSignal(keras.callbacks.Callback):
        """Raises `RunInterrupted` at epoch and evaluation boundaries once a signal has arrived; no batch hooks."""

        def __init__(self):
            super().__init__()
            self.trained = None  # the model, without the state sync that `self.model` does on JAX
            self.validating = False

        def set_model(self, model):
            super().set_model(model)
            self.trained = model

        def on_train_begin(self, logs=None):
            stopper.check()

        def on_epoch_begin(self, epoch, logs=None):
            stopper.check()

        def on_epoch_end(self, epoch, logs=None):
            stopper.check()

        def on_test_begin(self, logs=None):
            self.validating = True
            stopper.check()

        def on_test_end(self, logs=None):
            self.validating = False
            stopper.check()

        def on_predict_begin(self, logs=None):
            stopper.check()

        def on_predict_end(self, logs=None):
            stopper.check()

    return StopOnSignal()


_ACTIVE = []  # the blocks entered in this process, innermost last


def _after_fork_in_child():
    """A forked child is not inside the block: the previous handlers and wakeup fd come back."""
    while _ACTIVE:
        stopper = _ACTIVE.pop()
        stopper._active = False
        try:
            for signum, handler in stopper._previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            if stopper._pipe is not None:
                signal.set_wakeup_fd(stopper._previous_wakeup)
        except ValueError:  # forked from a thread other than the main one
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
