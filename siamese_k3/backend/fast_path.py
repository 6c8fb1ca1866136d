"""The training fast path: what each backend does cheaper than keras' `fit`, and the helpers they share.

`FastPath` is keras' own path (every method keras' behaviour); each backend's
`siamese_k3.backend.base.Backend` overrides what it does differently, and
`siamese_k3.backend.registry.path_of(model)` is what the models ask: the
running backend's, or `KERAS` when the fast path is off. Each backend's path
lives in the package named for it:

- jax (`siamese_k3.backend.jax`): compile defaults only, 32 steps per
  execution (fewer Python round trips between compiled steps), and a progress
  bar that counts no step past the epoch's end (`progress_bar_callbacks`);
- tensorflow (`siamese_k3.backend.tensorflow`): 32 steps per execution and
  XLA, the same progress bar, and keras' own tf.data batches for in-memory
  arrays with tf.data's autotuning off;
- torch (`siamese_k3.backend.torch`): keras' per-layer and per-step host work
  trimmed: a planned forward pass, layer kernels without layout copies, train
  and test steps with a cheaper loss mean and Adam update, batches of
  in-memory arrays gathered directly, and a callback list that calls batch
  hooks only for the callbacks that have them.

What they promise: `fit`, `evaluate` and the callbacks see what keras' own
path gives them. The same losses, weights and history (bit for bit, or to
float32 rounding where a fused kernel sums in another order), the same
callback calls. ``tests/test_conformance.py`` runs both paths side by side.

The fast path is off, and keras runs as it would for any model, when:

- the model is compiled with ``fast_path=False``;
- the environment sets ``SIAMESE_K3_FAST_PATH=0`` (read at each `compile`);
- the installed keras is outside the range the conformance suite runs on in
  CI (`TESTED_KERAS`): it then warns once, naming the range.

One exception: torch data-parallel training always takes the torch path,
whose own train step averages the gradients over the ranks (keras' torch step
cannot), even with the fast path off.
"""

import contextlib
import functools
import os
import re
import warnings

import keras

ENVIRONMENT_VARIABLE = "SIAMESE_K3_FAST_PATH"
# The keras releases the conformance suite runs on in CI (nox -s keras_floor; the newest in nox -s tests).
TESTED_KERAS = ("3.10.0", "3.16")  # from the first, below the second


class FastPath:
    """keras' own path: what a plain `keras.Model` with the same `call` and `compute_loss` does.

    Each backend's path overrides what it does differently. Every method takes
    the model (or its arguments) and returns what keras would use: a method
    that returns None means "keras' own".
    """

    name = "keras"

    def compile_defaults(self, model, run_eagerly):
        """(steps_per_execution, jit_compile) for arguments left as None: keras' own defaults."""
        return 1, "auto"

    def call(self, model, inputs, training):
        """``model.call(inputs, training=training)`` where skipping keras' `__call__` changes nothing, else None."""
        return None

    def forward(self, backbone, inputs, training):
        """The backbone's embeddings of `inputs`: ``backbone(inputs, training=training)``."""
        return backbone(inputs, training=training)

    def train_step(self, model):
        """The function (model, data) → logs that replaces keras' train step, or None."""
        return None

    def test_step(self, model):
        """The function (model, data) → logs that replaces keras' test step, or None."""
        return None

    def fit_input(self, model, x, y, fit_kwargs):
        """(x, y, fit_kwargs) as `fit` passes them to keras: unchanged."""
        return x, y, fit_kwargs

    def callbacks(self, model, x, callbacks, verbose, epochs, steps_per_epoch):
        """The callbacks `fit` hands keras: unchanged (keras makes its own list)."""
        return callbacks

    @contextlib.contextmanager
    def execution_scope(self, model, callbacks):
        """Around one `fit`, `evaluate` or `predict`: one step per execution while a callback has batch hooks.

        With ``steps_per_execution=N`` keras calls batch hooks once every N
        batches. When that N is a default of the fast path (`compile_defaults`),
        not the user's choice, and a callback (other than keras' progress bar and
        history) has a batch hook, this `fit` runs one step per execution, so the
        hooks see every batch as they would on keras' own path.
        """
        if not getattr(model, "_default_steps_per_execution", False) or model.steps_per_execution == 1:
            yield
            return
        if isinstance(callbacks, keras.callbacks.CallbackList):  # fit's own validation call: fit has decided
            yield
            return
        if not any(_has_batch_hooks(callback) for callback in keras.tree.flatten(callbacks or [])):
            yield
            return
        steps = model.steps_per_execution
        _set_steps_per_execution(model, 1)
        try:
            yield
        finally:
            _set_steps_per_execution(model, steps)


def enabled_by_environment():
    """False when ``SIAMESE_K3_FAST_PATH`` is 0, false, no or off; True otherwise (unset included)."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def keras_version_tested(version):
    """Whether keras `version` (a string such as "3.15.1") lies in `TESTED_KERAS`."""
    floor, ceiling = (_release(bound) for bound in TESTED_KERAS)
    return floor <= _release(version) < ceiling


def adapt_arrays(make_batches, model, x, y, fit_kwargs):
    """In-memory arrays as batches that `make_batches(x, batch_size, shuffle, y=, model=)` gives, or unchanged.

    Only for what keras' array adapter would batch itself (no validation_split,
    class_weight, sample_weight or steps_per_epoch); `batch_size` and `shuffle`
    move into the batches, and `batch_size` stays the validation batch size,
    as in keras. (x, y, fit_kwargs) unchanged when `make_batches` gives None.
    """
    if any(fit_kwargs.get(name) for name in ("validation_split", "class_weight", "steps_per_epoch")):
        return x, y, fit_kwargs
    if fit_kwargs.get("sample_weight") is not None:
        return x, y, fit_kwargs
    batch_size = fit_kwargs.get("batch_size") or 32
    shuffle = fit_kwargs.get("shuffle", True)
    batches = make_batches(x, batch_size, shuffle, y=y, model=model)
    if batches is None:
        return x, y, fit_kwargs
    fit_kwargs = dict(fit_kwargs, batch_size=None, shuffle=False)  # the batches are shuffled already
    fit_kwargs["validation_batch_size"] = fit_kwargs.get("validation_batch_size") or batch_size
    return batches, None, fit_kwargs


def progress_bar_callbacks(model, callbacks, verbose, history=True):
    """`callbacks` with `EpochProgbarLogger` as the progress bar while the fast path's steps per execution run.

    keras reports each execution of N steps as ending at step ``first + N - 1``,
    so the last one of an epoch whose steps are not a multiple of N ends past
    the epoch (``32/7``, and a negative ETA, for a 7-step epoch at 32 steps per
    execution). When N is the fast path's default (`compile_defaults`), not the
    user's choice, the list keras would make (the callbacks, a `History`, a
    progress bar) is given with `EpochProgbarLogger` as the progress bar;
    ``history=False`` for `evaluate` and `predict`, whose list has no History.
    `callbacks` unchanged otherwise: one step per execution, a
    ``steps_per_execution`` the user chose (keras' own bar then counts as keras
    does), ``verbose=0``, a `keras.callbacks.CallbackList` (keras uses it as it
    is), or a progress bar of the user's own among the callbacks.
    """
    if not getattr(model, "_default_steps_per_execution", False) or model.steps_per_execution == 1 or verbose == 0:
        return callbacks
    if not (callbacks is None or type(callbacks) in (list, tuple)):
        return callbacks
    listed = keras.tree.flatten(callbacks) if callbacks else []  # as keras' CallbackList flattens them
    if any(isinstance(callback, keras.callbacks.ProgbarLogger) for callback in listed):
        return callbacks
    if history and not any(isinstance(callback, keras.callbacks.History) for callback in listed):
        listed.append(keras.callbacks.History())  # keras' order: History, then the progress bar
    return [*listed, EpochProgbarLogger()]


class EpochProgbarLogger(keras.callbacks.ProgbarLogger):
    """keras' progress bar, counting at most the epoch's steps.

    A batch index past the last step of the epoch (``params["steps"]``, when
    keras knows it) counts as the last step: what the step function ran, since
    keras' execution stops where the epoch's batches end.
    """

    # Like keras' own bar, which its CallbackList adds after it decides on asynchronous dispatch.
    async_safe = True

    def _last_step(self, batch):
        return min(batch, self.target - 1) if self.target else batch

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(self._last_step(batch), logs)

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(self._last_step(batch), logs)

    def on_predict_batch_end(self, batch, logs=None):
        super().on_predict_batch_end(self._last_step(batch), logs)


def has_hook(callback, hook):
    """Whether `callback` does something in `hook`, by keras' own test (`CallbackList._configure_async_dispatch`).

    keras marks `Callback`'s do-nothing hooks with `_is_default`; a hook that a
    subclass overrides, or that an instance sets (`LambdaCallback`), has no
    mark. keras' default ``on_train_batch_*`` calls ``on_batch_*``, which counts
    too. Without the mark (a keras that dropped it) every hook counts.
    """
    generic = "on_batch_begin" if hook.endswith("_begin") else "on_batch_end"
    hooks = (hook, generic) if hook.startswith("on_train_") else (hook,)
    return any(not getattr(getattr(callback, name), "_is_default", False) for name in hooks)


BATCH_HOOKS = (
    "on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin", "on_test_batch_end",
    "on_predict_batch_begin", "on_predict_batch_end",
)  # fmt: skip


def _has_batch_hooks(callback):
    if type(callback) in (keras.callbacks.ProgbarLogger, EpochProgbarLogger, keras.callbacks.History):
        return False  # keras' own (and ours), which follow steps_per_execution by design
    return any(has_hook(callback, hook) for hook in BATCH_HOOKS)


def _set_steps_per_execution(model, steps):
    """Change a compiled model's steps per execution: keras builds its step functions anew at the next call."""
    model.steps_per_execution = steps
    model.train_function = model.test_function = model.predict_function = None


@functools.cache
def keras_tested():
    """Whether the installed keras lies in `TESTED_KERAS`; outside it, warns once (the fast path is then off)."""
    if keras_version_tested(keras.__version__):
        return True
    warnings.warn(
        f"siamese_k3's training fast path is tested with keras {TESTED_KERAS[0]} up to (not including) "
        f"{TESTED_KERAS[1]}; keras {keras.__version__} is installed, so models train on keras' own path "
        "(correct, possibly slower).",
        stacklevel=3,
    )
    return False


def _release(version):
    """(major, minor, patch) of a version string; pre-release and local parts are dropped."""
    numbers = [int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


KERAS = FastPath()
