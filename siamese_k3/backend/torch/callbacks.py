"""keras' callback list on PyTorch with batch hooks called only for the callbacks that have them.

keras' `CallbackList` on torch hands every batch's logs to a thread pool
(asynchronous dispatch, made for a GPU, where reading the loss waits for the
device) whenever no callback forbids it, and converts the logs even when no
callback does anything with them. On the CPU the loss is ready when the step
returns: batch hooks are called here only for callbacks that have one, with
keras' own test of what "having one" means (`keras.src.utils.python_utils.is_default`,
which sees hooks set on an instance, as `LambdaCallback` sets them:
`siamese_k3.backend.fast_path.has_hook`), and synchronously. On a GPU a list with batch hooks dispatches them as keras does.
"""

import functools

import keras

from siamese_k3.backend import fast_path
from siamese_k3.backend.torch import forward
from siamese_k3.backend.torch.arrays import on_cpu

def callback_list(model, x, callbacks, verbose, epochs, steps_per_epoch):
    """The `keras.callbacks.CallbackList` keras' torch `fit` would make, with batch hooks called only when needed.

    The list holds the same callbacks (`callbacks`, a `History`, and a
    `ProgbarLogger` unless ``verbose=0``) with the same parameters. Its batch
    hooks skip the per-batch work when no callback has that hook (keras' own
    list still converts the logs to Python floats and, on torch, hands them to
    a thread pool), and call the callbacks synchronously on the CPU. On a GPU,
    a list with a batch hook dispatches it as keras does (asynchronously).

    `callbacks` unchanged (keras makes its own list) unless training is eager
    torch, `callbacks` is None or a list of callbacks, and the number of
    batches per epoch is known here as keras would know it: ``steps_per_epoch``,
    the length of a `torch.utils.data.DataLoader` over a sized dataset, or a
    `keras.utils.PyDataset`'s ``num_batches``.
    """
    if not forward.eager_torch() or not (callbacks is None or type(callbacks) in (list, tuple)):
        return callbacks
    steps = steps_per_epoch or _num_batches(x)
    if steps is None:
        return callbacks
    return _callback_list_class()(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=steps,
        model=model,
        synchronous=on_cpu(),
    )


def _num_batches(x):
    """Batches per epoch of a sized DataLoader or a PyDataset, else None (not known before iterating)."""
    import torch

    if isinstance(x, torch.utils.data.DataLoader):
        return len(x) if hasattr(x.dataset, "__len__") else None
    if isinstance(x, keras.utils.PyDataset):
        try:
            return x.num_batches
        except NotImplementedError:
            return None
    return None


def _python_logs(logs):
    """The logs flattened, each value a Python float where it converts (keras' `pythonify_logs`)."""
    result = {}
    for key, value in sorted((logs or {}).items()):
        if isinstance(value, dict):
            result.update(_python_logs(value))
            continue
        try:
            value = float(keras.ops.convert_to_numpy(value) if keras.ops.is_tensor(value) else value)
        except (TypeError, ValueError):
            pass
        result[key] = value
    return result


@functools.cache
def _callback_list_class():
    class CallbackList(keras.callbacks.CallbackList):
        """keras' list; batch hooks only for callbacks that have them, synchronously on the CPU (`callback_list`)."""

        def __init__(self, callbacks=None, synchronous=True, **kwargs):
            self.synchronous = synchronous
            super().__init__(callbacks, **kwargs)

        def _batch_hook(self, hook, batch, logs):
            callbacks = [callback for callback in self.callbacks if fast_path.has_hook(callback, hook)]
            if not callbacks:
                return
            if not self.synchronous:
                getattr(super(), hook)(batch, logs)
                return
            logs = _python_logs(logs)
            for callback in callbacks:
                getattr(callback, hook)(batch, logs=logs)

        def on_train_batch_begin(self, batch, logs=None):
            self._batch_hook("on_train_batch_begin", batch, logs)

        def on_train_batch_end(self, batch, logs=None):
            self._batch_hook("on_train_batch_end", batch, logs)

        def on_test_batch_begin(self, batch, logs=None):
            self._batch_hook("on_test_batch_begin", batch, logs)

        def on_test_batch_end(self, batch, logs=None):
            self._batch_hook("on_test_batch_end", batch, logs)

    return CallbackList


