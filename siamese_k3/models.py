"""The shared-backbone Siamese model, trained with a triplet loss on any backend."""

import keras
import numpy as np
from keras import ops

from siamese_k3.backend import distributed, eager, fit as torch_fit, tf_input
from siamese_k3.checks import check_learning_rate, check_margin
from siamese_k3.distances import check_distance
from siamese_k3.losses import TripletSemiHardLoss, triplet_loss

TRIPLET_KEYS = ("anchor", "positive", "negative")


def split_triplet(inputs):
    """(anchor, positive, negative) from a tuple/list of three or a dict with those keys."""
    if isinstance(inputs, dict):
        missing = [key for key in TRIPLET_KEYS if key not in inputs]
        if missing:
            raise ValueError(f"Triplet dict lacks the key(s) {missing}; expected {list(TRIPLET_KEYS)}.")
        return tuple(inputs[key] for key in TRIPLET_KEYS)
    if isinstance(inputs, (tuple, list)) and len(inputs) == 3:
        return tuple(inputs)
    raise ValueError(
        "SiameseModel expects (anchor, positive, negative): a tuple of three "
        f"batches or a dict with those keys; got {type(inputs).__name__}"
        + (f" of length {len(inputs)}." if isinstance(inputs, (tuple, list)) else ".")
    )


def standalone_embedding(backbone):
    """The backbone as a new, uncompiled functional model sharing its layers and weights.

    What a run's ``embedding.keras`` holds: the inference model alone, with no
    optimizer and no loss in its file, so plain ``keras.models.load_model`` reads
    it in a process that has never imported siamese_k3 (the built-in backbones
    use only Keras' own layers). A backbone that was compiled with a mining loss
    would otherwise carry that loss in its compile config.
    """
    return keras.Model(backbone.input, backbone.output, name=backbone.name)  # the same input structure


def _carrier_targets(x, y, sample_weight):
    """Dummy targets for in-memory triplets given with sample_weight but no y.

    Keras drops `sample_weight` without a word when `y` is None
    (`pack_x_y_sample_weight`); zeros, which `compute_loss` ignores, carry it.
    """
    if y is None and sample_weight is not None and isinstance(x, (tuple, list, dict)):
        return np.zeros(np.shape(sample_weight)[:1], "float32")
    return y


def _array_batches(model, x, y, fit_kwargs):
    """In-memory arrays as the batches keras' own array adapter gives, delivered faster.

    On torch a DataLoader that gathers them directly (`fit.array_loader`); on
    TensorFlow keras' own tf.data pipeline with tf.data's autotuning off
    (`tf_input.array_dataset`). Only for what keras' array adapter would batch
    itself (no validation_split, class_weight or steps_per_epoch); `batch_size`
    and `shuffle` move into the batches, and `batch_size` stays the validation
    batch size as in keras. Otherwise (x, y, fit_kwargs) unchanged.
    """
    if any(fit_kwargs.get(name) for name in ("validation_split", "class_weight", "steps_per_epoch")):
        return x, y, fit_kwargs
    batch_size = fit_kwargs.get("batch_size") or 32
    shuffle = fit_kwargs.get("shuffle", True)
    batches = torch_fit.array_loader(x, batch_size, shuffle, y=y)
    if batches is None:
        batches = tf_input.array_dataset(x, batch_size, shuffle, y=y, model=model)
    if batches is None:
        return x, y, fit_kwargs
    fit_kwargs = dict(fit_kwargs, batch_size=None, shuffle=False)  # the batches are shuffled already
    fit_kwargs["validation_batch_size"] = fit_kwargs.get("validation_batch_size") or batch_size
    return batches, None, fit_kwargs


class _FastModel(keras.Model):
    """What every siamese_k3 training model shares: a backbone, and the backend's fastest settings by default.

    - ``backbone``: a `keras.Model` mapping one input batch to embeddings
      [B, D], serialized with the model (`get_config` / `from_config`).

    - `compile`: left as None, ``steps_per_execution`` and ``jit_compile`` take
      the values measured fastest on each backend (benchmarks/RESULTS.md):

      - jax: ``steps_per_execution=32``, ``jit_compile="auto"`` (XLA);
      - tensorflow: ``steps_per_execution=32``, ``jit_compile=True`` (XLA, also
        on CPU, where keras' ``"auto"`` leaves it off) unless a layer does not
        support XLA;
      - torch: ``steps_per_execution=1`` (the only value keras supports on
        torch) and eager execution, with keras' per-step overheads trimmed
        (below). ``torch.compile`` (``jit_compile=True``) is opt-in: it costs
        seconds to minutes of compilation per model and a C++ compiler.

      With ``run_eagerly=True`` both keep keras' defaults. A value passed
      explicitly, ``"auto"`` included, is used as is. With
      ``steps_per_execution=N > 1`` keras runs N batches per call, so
      batch-level callbacks and the progress bar run once every N batches;
      pass ``steps_per_execution=1`` when a callback must see every batch.

    - On PyTorch, where every step runs in Python, keras' per-step work is done
      more cheaply with the same results (`siamese_k3.backend`): the model and a
      functional backbone of keras' own layers skip keras' per-layer call
      bookkeeping, and Conv2D / MaxPooling2D / Dense / Activation run the
      torch ops keras' own calls end in, without its layout copies and per-op
      dispatch (`eager`, `kernels`); the train and
      test steps keep the running loss mean with in-place additions and
      update keras' Adam without its `apply` bookkeeping (`fit`); `fit` on
      in-memory numpy arrays gathers keras' own shuffled batches directly
      (`fit.array_loader`); and batch-level callback hooks run only when a
      callback has one, synchronously on the CPU (`fit.callback_list`).

    - On TensorFlow, `fit` on in-memory numpy arrays trains on keras' own
      tf.data batches with tf.data's autotuning off, in one private thread
      (`tf_input.array_dataset`), which on a small CPU no longer competes with
      the step.
    """

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(backbone, keras.Model):
            raise TypeError(f"backbone must be a keras.Model, got {type(backbone).__name__}.")
        self.backbone = backbone

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"], custom_objects=custom_objects)
        return cls(**config)

    def __call__(self, inputs, *args, **kwargs):
        # On torch, skip keras' per-call bookkeeping when it would change nothing (backend/eager.py).
        training = kwargs.get("training")
        if not args and set(kwargs) == {"training"} and eager.can_call_directly(self, inputs, training):
            return self.call(inputs, training=training)
        return super().__call__(inputs, *args, **kwargs)

    def train_step(self, *args):
        # On torch, the running loss mean without keras' Mean overhead, and the
        # gradients averaged over the ranks under data-parallel training (backend/fit.py).
        if torch_fit.can_step_directly(self):
            return torch_fit.train_step(self, *args)
        torch_fit.check_not_data_parallel(self)
        return distributed.replica_logs(super().train_step(*args))

    def test_step(self, *args):
        if torch_fit.can_step_directly(self):
            return torch_fit.test_step(self, *args)
        return distributed.replica_logs(super().test_step(*args))

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, *args, **kwargs):
        # On torch, batch hooks only for callbacks that have them, synchronously on the CPU (backend/fit.py).
        if not args:
            callbacks = torch_fit.callback_list(self, x, callbacks, verbose, epochs, kwargs.get("steps_per_epoch"))
        return super().fit(x, y, batch_size, epochs, verbose, callbacks, *args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # keras' own (tensorflow) reads one distributed batch and reduces it with
        # strategy.reduce, which MultiWorkerMirroredStrategy refuses for a (x, y)
        # tuple; and reading ahead would drop that batch. Under data-parallel
        # training build from the dataset's spec instead (backend/distributed).
        signature = distributed.input_signature()
        if signature is not None and data_batch is None:
            return super()._maybe_symbolic_build(data_batch=signature)
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def compile(self, optimizer="adam", steps_per_execution=None, jit_compile=None, **kwargs):
        """`keras.Model.compile` with the backend's fastest settings as defaults (see the class)."""
        if isinstance(optimizer, keras.optimizers.Optimizer):
            rate = optimizer.get_config().get("learning_rate")  # a float, a serialized schedule, or absent
            if isinstance(rate, (int, float)):
                check_learning_rate(rate, name="optimizer learning_rate")
        backend = keras.backend.backend()
        eager_run = bool(kwargs.get("run_eagerly"))
        if steps_per_execution is None:
            # Amortises fit()'s per-step host work (callback dispatch, state
            # bookkeeping, one compiled-function call per batch) over 32 batches.
            steps_per_execution = 1 if eager_run or backend == "torch" else 32
            # keras 3.15's multi-step loop fails under MultiWorkerMirroredStrategy ("destinations can not be empty").
            steps_per_execution = min(steps_per_execution, distributed.max_steps_per_execution())
        if jit_compile is None:
            jit_compile = "auto"
            # Not for a layer without XLA support: keras would warn and fall back.
            # Nor under tf.distribute, where keras' "auto" leaves XLA off.
            if backend == "tensorflow" and not eager_run and distributed.current() is None and all(
                getattr(layer, "supports_jit", True) for layer in self._flatten_layers()
            ):
                jit_compile = True
        super().compile(
            optimizer=optimizer, steps_per_execution=steps_per_execution, jit_compile=jit_compile, **kwargs
        )

    def compile_from_config(self, config):
        """Recompile a loaded model with its saved optimizer and settings (keras skips custom compiles)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)


@keras.saving.register_keras_serializable(package="siamese_k3")
class SiameseModel(_FastModel):
    """One backbone shared by the anchor, positive and negative branches.

    ``model((anchor, positive, negative))`` returns the three embeddings. The
    training loss is the mean over the batch of

        relu(d(f(a), f(p)) - d(f(a), f(n)) + margin)   (or softplus(...) if soft)

    (`siamese_k3.losses.triplet_loss`), computed in `compute_loss` with
    keras.ops, so the standard `compile()` / `fit()` / `evaluate()` /
    `predict()` work unchanged on TensorFlow, JAX and PyTorch. Data is the
    triplet alone, no labels: numpy arrays ``fit((a, p, n))``, a
    `keras.utils.PyDataset` whose items are ``((a, p, n),)``, or a `tf.data`
    dataset of such elements.

    The backbone runs once per step on the concatenated 3·B batch rather
    than three times (measured faster, see benchmarks/RESULTS.md). Hence a
    BatchNormalization layer in the backbone normalises anchors, positives
    and negatives with the statistics of the whole 3·B batch and updates its
    moving averages once per step, as a single forward pass of all the
    images would.

    `compile` defaults to each backend's fastest settings, and on PyTorch
    keras' per-step work is trimmed with the same results (`_FastModel`).

    `model.backbone` is the standalone embedding network: train here, then
    ``model.backbone.predict(images)``; no weight copying.

    Args:
        backbone: a `keras.Model` mapping one input batch to embeddings [B, D].
        margin: triplet margin (ignored when ``soft=True``).
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        soft: soft-margin triplet loss (Hermans et al. 2017).
    """

    def __init__(self, backbone, margin=1.0, distance="euclidean", soft=False, **kwargs):
        super().__init__(backbone, **kwargs)
        self.margin = float(check_margin(margin))
        self.distance = check_distance(distance)
        self.soft = bool(soft)

    def build(self, input_shape=None):
        if not self.backbone.built and input_shape is not None:
            self.backbone.build(split_triplet(input_shape)[0])
        self.built = True

    def call(self, inputs, training=None):
        anchor, positive, negative = split_triplet(inputs)
        batch_size = ops.shape(anchor)[0]
        embeddings = eager.forward(
            self.backbone, ops.concatenate([anchor, positive, negative], axis=0), training
        )
        return (
            embeddings[:batch_size],
            embeddings[batch_size : 2 * batch_size],
            embeddings[2 * batch_size :],
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        per_triplet = triplet_loss(
            *y_pred, margin=self.margin, distance=self.distance, soft=self.soft
        )
        if sample_weight is not None:
            weights = ops.reshape(ops.cast(sample_weight, per_triplet.dtype), (-1,))
            loss = ops.sum(per_triplet * weights) / ops.maximum(ops.sum(weights), 1e-12)
        else:
            loss = ops.mean(per_triplet)
        for extra in self.losses:  # regularisers and add_loss() of the backbone
            loss = loss + ops.cast(ops.sum(extra), loss.dtype)
        # Each replica's mean over its own triplets: scaled so the engine's gradient reduction
        # gives one device's gradient on the global batch (backend/distributed).
        scale = distributed.loss_scale()
        return loss if scale == 1.0 else loss * scale

    def fit(self, x=None, y=None, *args, sample_weight=None, **kwargs):
        y = _carrier_targets(x, y, sample_weight)
        if y is None and sample_weight is None and not args:
            x, y, kwargs = _array_batches(self, x, None, kwargs)
        return super().fit(x, y, *args, sample_weight=sample_weight, **kwargs)

    def evaluate(self, x=None, y=None, *args, sample_weight=None, **kwargs):
        y = _carrier_targets(x, y, sample_weight)
        return super().evaluate(x, y, *args, sample_weight=sample_weight, **kwargs)

    def compile(self, optimizer="adam", **kwargs):
        """`keras.Model.compile` with Adam and the backend's fastest settings as defaults.

        The loss is built in (set margin/distance/soft on the model). Left as
        None, ``steps_per_execution`` and ``jit_compile`` take the values measured
        fastest on each backend (see `_FastModel`: 32 and XLA on jax and
        tensorflow, eager torch with keras' per-step overheads trimmed).
        """
        if kwargs.get("loss") is not None:
            raise ValueError(
                "SiameseModel computes its own triplet loss: set margin/distance/soft "
                "on the model instead of passing loss= to compile()."
            )
        super().compile(optimizer=optimizer, **kwargs)

    def get_config(self):
        return {
            **super().get_config(),
            "margin": self.margin,
            "distance": self.distance,
            "soft": self.soft,
        }


@keras.saving.register_keras_serializable(package="siamese_k3")
class MiningModel(_FastModel):
    """A backbone trained on labelled batches with an online-mining triplet loss.

    The TF Addons pattern ``backbone.compile(loss=TripletSemiHardLoss())``,
    ``backbone.fit(images, labels)``, on the fast path: ``model =
    MiningModel(backbone)``, then ``model.compile(loss=...)`` and
    ``model.fit(images, labels)`` as with any keras model. The loss gets
    y_true = integer labels [B] and y_pred = embeddings [B, D] = backbone(images),
    and mines its triplets inside each batch (`TripletSemiHardLoss`,
    `TripletHardLoss`, `TripletBatchAllLoss`; any keras loss of that shape
    works). Give it class-balanced batches (P classes × K images,
    `siamese_k3.data.ClassBalancedBatches`) so that every anchor has positives.

    What plain ``backbone.compile`` leaves at keras' defaults, `compile` sets
    to each backend's fastest (`_FastModel`): XLA on tensorflow (keras'
    ``"auto"`` leaves it off on the CPU), 32 steps per execution on jax and
    tensorflow, and on torch keras' per-layer and per-step overheads trimmed,
    channels-last convolutions without keras' layout copies included.
    ``model(images)`` is ``backbone(images)``; `model.backbone` is the
    embedding network, trained in place (save it alone with
    `standalone_embedding`).

    Args:
        backbone: a `keras.Model` mapping one input batch to embeddings [B, D].
    """

    def build(self, input_shape=None):
        if not self.backbone.built and input_shape is not None:
            self.backbone.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        return eager.forward(self.backbone, inputs, training)

    def compile(self, optimizer="adam", loss=None, **kwargs):
        """`keras.Model.compile` with Adam, `TripletSemiHardLoss()` and the backend's fastest settings as defaults."""
        if loss is None:
            loss = TripletSemiHardLoss()
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def fit(self, x=None, y=None, *args, **kwargs):
        if y is not None and not args and kwargs.get("sample_weight") is None:
            x, y, kwargs = _array_batches(self, x, y, kwargs)
        return super().fit(x, y, *args, **kwargs)
