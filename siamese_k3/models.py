"""The shared-backbone Siamese model, trained with a triplet loss on any backend."""

import keras
import numpy as np
from keras import ops

from siamese_k3.backend import distributed
from siamese_k3.backend.fast_path import enabled_by_environment, progress_bar_callbacks
from siamese_k3.backend.registry import path_of
from siamese_k3.checks import check_learning_rate, check_margin
from siamese_k3.distances import check_distance
from siamese_k3.errors import SiameseK3Error
from siamese_k3.losses import Proxies, TripletSemiHardLoss, triplet_loss
from siamese_k3.losses.proxies import ProxyLoss

TRIPLET_KEYS = ("anchor", "positive", "negative")


def split_triplet(inputs):
    """(anchor, positive, negative) from a tuple/list of three or a dict with those keys."""
    if isinstance(inputs, dict):
        missing = [key for key in TRIPLET_KEYS if key not in inputs]
        if missing:
            raise SiameseK3Error(f"Triplet dict lacks the key(s) {missing}; expected {list(TRIPLET_KEYS)}.")
        return tuple(inputs[key] for key in TRIPLET_KEYS)
    if isinstance(inputs, (tuple, list)) and len(inputs) == 3:
        return tuple(inputs)
    raise SiameseK3Error(
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


class _FastModel(keras.Model):
    """What every siamese_k3 training model shares: a backbone, and the training fast path.

    - ``backbone``: a `keras.Model` mapping one input batch to embeddings
      [B, D], serialized with the model (`get_config` / `from_config`).

    - The fast path (`siamese_k3.backend.fast_path`): each backend's cheaper
      way through keras' `fit`, with keras' results: the same losses, weights,
      history and callback calls (``tests/test_conformance.py`` checks it
      against keras' own path). Left as None, ``steps_per_execution`` and
      ``jit_compile`` take the values measured fastest on the backend
      (benchmarks/RESULTS.md); a value passed explicitly, ``"auto"`` included,
      is used as is. A `fit`, `evaluate` or `predict` whose callbacks have
      batch hooks then runs one step per execution, so they see every batch.

      ``compile(fast_path=False)``, or ``SIAMESE_K3_FAST_PATH=0`` in the
      environment, turns it off: the model then trains exactly as a plain
      `keras.Model` with the same `call` and `compute_loss`, keras' defaults
      included. It is also off, with a warning, on a keras outside the range
      the suite is run on (`fast_path.TESTED_KERAS`).
    """

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(backbone, keras.Model):
            raise TypeError(f"backbone must be a keras.Model, got {type(backbone).__name__}.")
        self.backbone = backbone
        self._fast_path = enabled_by_environment()
        self._default_steps_per_execution = False

    _SAVED_LAYERS = ("backbone",)  # the layers the config holds, each serialized with the model

    def get_config(self):
        layers = {name: getattr(self, name) for name in self._SAVED_LAYERS}
        return {**super().get_config(), **{name: layer if layer is None else keras.saving.serialize_keras_object(layer)
                                           for name, layer in layers.items()}}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for name in cls._SAVED_LAYERS:
            if config.get(name) is not None:
                config[name] = keras.saving.deserialize_keras_object(config[name], custom_objects=custom_objects)
        return cls(**config)

    def _training_path(self):
        return path_of(self)

    def __call__(self, inputs, *args, **kwargs):
        if not args and set(kwargs) == {"training"}:
            outputs = self._training_path().call(self, inputs, kwargs["training"])
            if outputs is not None:
                return outputs
        return super().__call__(inputs, *args, **kwargs)

    def _forward(self, inputs, training):
        """The backbone's embeddings of `inputs`, through the fast path's forward pass."""
        return self._training_path().forward(self.backbone, inputs, training)

    def train_step(self, *args):
        step = self._training_path().train_step(self)
        if step is not None:
            return step(self, *args)
        return distributed.replica_logs(super().train_step(*args))

    def test_step(self, *args):
        step = self._training_path().test_step(self)
        if step is not None:
            return step(self, *args)
        return distributed.replica_logs(super().test_step(*args))

    # fit, evaluate and predict take keras' own parameters, by name and with keras' defaults
    # (tests/test_keras_internals.py checks they still are keras'), and hand every one on by name.
    # Subclasses adapt their inputs in `_fit_arguments` and `_targets`, not by overriding these.
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1):
        options = dict(
            batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks,
            validation_split=validation_split, validation_data=validation_data, shuffle=shuffle,
            class_weight=class_weight, sample_weight=sample_weight, initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
            validation_batch_size=validation_batch_size, validation_freq=validation_freq,
        )
        x, y, options = self._fit_arguments(x, y, options)
        path = self._training_path()
        with path.execution_scope(self, options["callbacks"]):
            options["callbacks"] = path.callbacks(
                self, x, options["callbacks"], options["verbose"], options["epochs"], options["steps_per_epoch"]
            )
            return super().fit(x=x, y=y, **options)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False, **kwargs):
        y = self._targets(x, y, sample_weight)
        with self._training_path().execution_scope(self, callbacks):
            # the progress bar counts at most the steps there are
            callbacks = progress_bar_callbacks(self, callbacks, verbose, history=False)
            return super().evaluate(
                x=x, y=y, batch_size=batch_size, verbose=verbose, sample_weight=sample_weight, steps=steps,
                callbacks=callbacks, return_dict=return_dict, **kwargs,  # keras' own: _use_cached_eval_dataset
            )

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        with self._training_path().execution_scope(self, callbacks):
            callbacks = progress_bar_callbacks(self, callbacks, verbose, history=False)
            return super().predict(x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks)

    def _targets(self, x, y, sample_weight):
        """The `y` keras gets for `x` (fit and evaluate): `y` itself here."""
        return y

    def _fit_arguments(self, x, y, options):
        """(x, y, options) for keras' fit: the targets, then in-memory arrays as the fast path's batches."""
        return x, self._targets(x, y, options["sample_weight"]), options

    def _fit_input(self, x, y, fit_kwargs):
        """(x, y, fit_kwargs) with in-memory arrays as the fast path's batches (keras' own, delivered faster)."""
        return self._training_path().fit_input(self, x, y, fit_kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # keras' own (where its trainer has one) reads one distributed batch and reduces it with
        # strategy.reduce, which MultiWorkerMirroredStrategy refuses for a (x, y)
        # tuple; and reading ahead would drop that batch. Under data-parallel
        # training build from the dataset's spec instead (backend/distributed).
        signature = distributed.input_signature()
        if signature is not None and data_batch is None:
            return super()._maybe_symbolic_build(data_batch=signature)
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def compile(self, optimizer="adam", steps_per_execution=None, jit_compile=None, fast_path=None, **kwargs):
        """`keras.Model.compile`, with the fast path's defaults for arguments left as None (see the class).

        Args:
            fast_path: False trains on keras' own path; None (default) follows
                ``SIAMESE_K3_FAST_PATH`` (on unless it is 0); True turns it on.
        """
        if isinstance(optimizer, keras.optimizers.Optimizer):
            rate = optimizer.get_config().get("learning_rate")  # a float, a serialized schedule, or absent
            if isinstance(rate, (int, float)):
                check_learning_rate(rate, name="optimizer learning_rate")
        self._fast_path = enabled_by_environment() if fast_path is None else bool(fast_path)
        default_steps, default_jit = self._training_path().compile_defaults(self, bool(kwargs.get("run_eagerly")))
        self._default_steps_per_execution = steps_per_execution is None and default_steps > 1
        super().compile(
            optimizer=optimizer,
            steps_per_execution=default_steps if steps_per_execution is None else steps_per_execution,
            jit_compile=default_jit if jit_compile is None else jit_compile,
            **kwargs,
        )

    def get_compile_config(self):
        """keras' compile config, with a backend's own optimizer class saved under its public name.

        On one backend ``keras.optimizers.Adam()`` is an instance of that
        backend's own subclass, in a module under ``keras.src.backend.``, and
        keras saves that module: such a model.keras would not load where that
        backend is not installed ("its parent module ... cannot be imported").
        Saved as ``keras.optimizers.Adam`` (same class name, same config), it
        loads as each backend's Adam.
        """
        config = super().get_compile_config()
        optimizer = (config or {}).get("optimizer")
        if isinstance(optimizer, dict) and str(optimizer.get("module")).startswith("keras.src.backend."):
            public = getattr(keras.optimizers, str(optimizer.get("class_name")), None)
            if isinstance(public, type) and isinstance(self.optimizer, public):
                optimizer["module"] = "keras.optimizers"
        return config

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
    `predict()` work unchanged on every keras backend. Data is the
    triplet alone, no labels: numpy arrays ``fit((a, p, n))``, a
    `keras.utils.PyDataset` whose items are ``((a, p, n),)``, or any dataset
    `fit` takes whose elements are such.

    The backbone runs once per step on the concatenated 3·B batch rather
    than three times (measured faster, see benchmarks/RESULTS.md). Hence a
    BatchNormalization layer in the backbone normalises anchors, positives
    and negatives with the statistics of the whole 3·B batch and updates its
    moving averages once per step, as a single forward pass of all the
    images would.

    `compile` defaults to each backend's fastest settings, and keras' per-step
    work is trimmed with the same results (the fast path, `_FastModel`).

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
        embeddings = self._forward(ops.concatenate([anchor, positive, negative], axis=0), training)
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

    def _targets(self, x, y, sample_weight):
        return _carrier_targets(x, y, sample_weight)

    def _fit_arguments(self, x, y, options):
        y = self._targets(x, y, options["sample_weight"])
        if y is None and options["sample_weight"] is None:
            return self._fit_input(x, None, options)
        return x, y, options

    def compile(self, optimizer="adam", **kwargs):
        """`keras.Model.compile` with Adam and the backend's fastest settings as defaults.

        The loss is built in (set margin/distance/soft on the model). Left as
        None, ``steps_per_execution`` and ``jit_compile`` take the values measured
        fastest on each backend (`_FastModel`); ``fast_path=False`` keeps keras'
        own path and defaults.
        """
        if kwargs.get("loss") is not None:
            raise SiameseK3Error(
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

    The Addons-era pattern ``backbone.compile(loss=TripletSemiHardLoss())``,
    ``backbone.fit(images, labels)``, on the fast path: ``model =
    MiningModel(backbone)``, then ``model.compile(loss=...)`` and
    ``model.fit(images, labels)`` as with any keras model. The loss gets
    y_true = integer labels [B] and y_pred = embeddings [B, D] = backbone(images),
    and mines its triplets inside each batch (`TripletSemiHardLoss`,
    `TripletHardLoss`, `TripletBatchAllLoss`; any keras loss of that shape
    works). Give it class-balanced batches (P classes × K images,
    `siamese_k3.data.ClassBalancedBatches`) so that every anchor has positives.

    What plain ``backbone.compile`` leaves at keras' defaults, `compile` sets
    to each backend's fastest, and keras' per-layer and per-step work is
    trimmed with the same results (the fast path, `_FastModel`).
    ``model(images)`` is ``backbone(images)``; `model.backbone` is the
    embedding network, trained in place (save it alone with
    `standalone_embedding`).

    The proxy losses (`ArcFaceLoss`, ...) train one vector per class, ``proxies=Proxies(C)``: weights of
    this model (trained, saved and resumed with it), never of the embedding network.

    Args:
        backbone: a `keras.Model` mapping one input batch to embeddings [B, D].
        proxies: a `siamese_k3.Proxies` layer for a proxy loss, or None.
    """

    _SAVED_LAYERS = ("backbone", "proxies")

    def __init__(self, backbone, proxies=None, **kwargs):
        super().__init__(backbone, **kwargs)
        if proxies is not None and not isinstance(proxies, Proxies):
            raise TypeError(f"proxies must be a siamese_k3.Proxies layer, got {type(proxies).__name__}.")
        self.proxies = proxies
        if proxies is not None and not proxies.built and getattr(self.backbone, "outputs", None):  # D is known
            proxies.build(tuple(self.backbone.outputs[0].shape))

    def build(self, input_shape=None):
        if not self.backbone.built and input_shape is not None:
            self.backbone.build(input_shape)
        if self.proxies is not None and not self.proxies.built:
            self.proxies.build(self.backbone.compute_output_shape(input_shape))
        self.built = True

    def call(self, inputs, training=None):
        return self._forward(inputs, training)

    def compile(self, optimizer="adam", loss=None, **kwargs):
        """`keras.Model.compile` with Adam, `TripletSemiHardLoss()` and the backend's fastest settings as defaults."""
        if loss is None:
            loss = TripletSemiHardLoss()
        if isinstance(loss, ProxyLoss):
            loss.bind(self.proxies)  # the model's own; a SiameseK3Error when it has none
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def _fit_arguments(self, x, y, options):
        if y is not None and options["sample_weight"] is None:
            return self._fit_input(x, y, options)
        return x, y, options
