"""siamese_k3.losses (the triplet family) against brute-force numpy loops that follow the docstrings."""

import math

import keras
import numpy as np
import pytest
from _grad import gradient
from keras import ops

from siamese_k3.distances import DISTANCES
from siamese_k3.losses import (
    TripletBatchAllLoss,
    TripletHardLoss,
    TripletLoss,
    TripletSemiHardLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    fraction_positive_triplets,
    get,
    semi_hard_triplet_loss,
    triplet_loss,
)

# --------------------------------------------------------------------------
# Independent float64 references: one loop per triplet, as the docstrings say.
# --------------------------------------------------------------------------


def relu(value):
    return max(value, 0.0)


def softplus(value):
    return math.log1p(math.exp(value))


def reference_distance(x, y, distance):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if distance == "cosine":
        norm = max(np.linalg.norm(x), 1e-12) * max(np.linalg.norm(y), 1e-12)
        return 1.0 - float(np.dot(x, y)) / norm
    squared = float(np.sum((x - y) ** 2))
    return squared if distance == "squared_euclidean" else math.sqrt(squared)


def reference_matrix(embeddings, distance, normalize):
    embeddings = np.asarray(embeddings, np.float64)
    if normalize:
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        embeddings = embeddings / np.maximum(norms, 1e-12)
    size = len(embeddings)
    return np.array(
        [
            [
                0.0 if a == b else reference_distance(embeddings[a], embeddings[b], distance)
                for b in range(size)
            ]
            for a in range(size)
        ]
    )


def positives_of(labels, anchor):
    return [p for p in range(len(labels)) if p != anchor and labels[p] == labels[anchor]]


def negatives_of(labels, anchor):
    return [n for n in range(len(labels)) if labels[n] != labels[anchor]]


def reference_batch_all(labels, embeddings, margin, distance, normalize):
    d = reference_matrix(embeddings, distance, normalize)
    total, active = 0.0, 0
    for a in range(len(labels)):
        for p in positives_of(labels, a):
            for n in negatives_of(labels, a):
                value = relu(d[a, p] - d[a, n] + margin)
                total += value
                active += value > 0
    return total / active if active else 0.0


def reference_fraction_positive(labels, embeddings, margin, distance, normalize):
    d = reference_matrix(embeddings, distance, normalize)
    valid = active = 0
    for a in range(len(labels)):
        for p in positives_of(labels, a):
            for n in negatives_of(labels, a):
                valid += 1
                active += d[a, p] - d[a, n] + margin > 0
    return active / valid if valid else 0.0


def reference_batch_hard(labels, embeddings, margin, distance, normalize, soft):
    d = reference_matrix(embeddings, distance, normalize)
    losses = []
    for a in range(len(labels)):
        positives, negatives = positives_of(labels, a), negatives_of(labels, a)
        if not positives or not negatives:
            continue
        difference = max(d[a, p] for p in positives) - min(d[a, n] for n in negatives)
        losses.append(softplus(difference) if soft else relu(difference + margin))
    return float(np.mean(losses)) if losses else 0.0


def reference_semi_hard(labels, embeddings, margin, distance, normalize):
    """TF Addons' rule: the closest negative strictly farther than the positive, else the farthest."""
    d = reference_matrix(embeddings, distance, normalize)
    losses = []
    for a in range(len(labels)):
        negatives = [d[a, n] for n in negatives_of(labels, a)]
        if not negatives:
            continue
        for p in positives_of(labels, a):
            farther = [value for value in negatives if value > d[a, p]]
            chosen = min(farther) if farther else max(negatives)
            losses.append(relu(d[a, p] - chosen + margin))
    return float(np.mean(losses)) if losses else 0.0


REFERENCES = {
    "batch_all": (batch_all_triplet_loss, reference_batch_all, {}),
    "batch_hard": (batch_hard_triplet_loss, reference_batch_hard, {"soft": False}),
    "batch_hard_soft": (batch_hard_triplet_loss, reference_batch_hard, {"soft": True}),
    "semi_hard": (semi_hard_triplet_loss, reference_semi_hard, {}),
}


def as_float(tensor):
    return float(ops.convert_to_numpy(tensor))


def random_batch(seed, size=None, num_classes=None, dim=8):
    rng = np.random.default_rng(seed)
    # Two batch sizes only: JAX compiles every op once per shape, so few shapes keep the tests fast.
    size = size or int(rng.choice([24, 40]))
    num_classes = num_classes or (3, 4, 6)[seed % 3]
    labels = rng.integers(0, num_classes, size=size).astype("int32")
    # Class centres close enough that every mining rule has work to do.
    centres = rng.normal(size=(num_classes, dim))
    embeddings = (0.7 * centres[labels] + rng.normal(size=(size, dim))).astype("float32")
    return labels, embeddings


# --------------------------------------------------------------------------
# triplet_loss
# --------------------------------------------------------------------------


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_loss_matches_numpy(distance, soft, rng):
    anchor, positive, negative = rng.normal(size=(3, 9, 5)).astype("float32")
    margin = 0.4
    result = triplet_loss(anchor, positive, negative, margin=margin, distance=distance, soft=soft)
    expected = []
    for a, p, n in zip(anchor, positive, negative):
        difference = reference_distance(a, p, distance) - reference_distance(a, n, distance)
        expected.append(softplus(difference) if soft else relu(difference + margin))
    assert tuple(result.shape) == (9,)
    assert ops.dtype(result) == "float32"
    np.testing.assert_allclose(ops.convert_to_numpy(result), expected, rtol=1e-5, atol=1e-6)


def test_triplet_loss_docstring_example():
    result = triplet_loss([[0.0, 0.0]], [[0.0, 1.0]], [[0.0, 1.5]], margin=1.0)
    np.testing.assert_allclose(ops.convert_to_numpy(result), [0.5], rtol=1e-6)


# --------------------------------------------------------------------------
# Mining losses on random batches
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("loss_name", sorted(REFERENCES))
def test_mining_loss_matches_brute_force(loss_name, distance, normalize, seed):
    function, reference, options = REFERENCES[loss_name]
    labels, embeddings = random_batch(seed)
    margin = 0.3 if distance == "cosine" or normalize else 1.0
    result = function(
        labels, embeddings, margin=margin, distance=distance, normalize=normalize, **options
    )
    expected = reference(labels, embeddings, margin, distance, normalize, **options)
    assert ops.dtype(result) == "float32"
    assert tuple(result.shape) == ()
    np.testing.assert_allclose(as_float(result), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("distance", DISTANCES)
def test_fraction_positive_triplets_matches_brute_force(distance, seed):
    labels, embeddings = random_batch(seed)
    result = fraction_positive_triplets(labels, embeddings, margin=0.5, distance=distance)
    expected = reference_fraction_positive(labels, embeddings, 0.5, distance, False)
    assert 0.0 < expected < 1.0  # the batch is neither trivial nor hopeless
    np.testing.assert_allclose(as_float(result), expected, rtol=1e-5)


@pytest.mark.parametrize("distance", DISTANCES)
def test_semi_hard_with_tied_distances_matches_brute_force(distance, rng):
    """Duplicated embeddings make d(a, n) == d(a, p) exactly: "strictly greater" must hold."""
    if distance == "cosine":  # scaled ±basis vectors: cosine distances are exactly 0, 1 or 2
        points = np.eye(4, dtype="float32")[rng.integers(0, 4, size=6)]
        points *= rng.choice([-3.0, -1.0, 0.5, 2.0], size=(6, 1)).astype("float32")
    else:  # small integers: every distance, hence every tie, is exact in float32
        points = rng.integers(-2, 3, size=(6, 4)).astype("float32")
    embeddings = np.concatenate([points, points, points[:3]])
    labels = np.array([0, 1, 2, 0, 1, 2, 1, 2, 0, 0, 1, 2, 2, 0, 1], "int32")
    for margin in (0.5, 2.0):
        result = semi_hard_triplet_loss(labels, embeddings, margin=margin, distance=distance)
        expected = reference_semi_hard(labels, embeddings, margin, distance, False)
        np.testing.assert_allclose(as_float(result), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="only a TensorFlow graph has a dynamic batch size")
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("loss_name", ["batch_all", "semi_hard"])
def test_a_graph_traced_for_any_batch_size_matches_brute_force(loss_name, jit_compile):
    """keras' `fit` traces the step with a dynamic batch size: the bisection then runs as a while_loop.

    Ties included (small integer embeddings), and two batch sizes through the one traced graph.
    """
    import tensorflow as tf

    function, reference, _ = REFERENCES[loss_name]
    spec = (tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, None], tf.float32))
    traced = tf.function(lambda y, x: function(y, x, margin=1.0), input_signature=spec, jit_compile=jit_compile)
    rng = np.random.default_rng(3)
    for size in (9, 24):
        labels = rng.integers(0, 3, size=size).astype("int32")
        embeddings = rng.integers(-2, 3, size=(size, 4)).astype("float32")
        expected = reference(labels, embeddings, 1.0, "euclidean", False)
        np.testing.assert_allclose(float(traced(labels, embeddings)), expected, rtol=1e-5, atol=1e-6)
    assert len(traced.get_concrete_function().graph.get_operations()) < 400  # one bisection step, not 31


def test_semi_hard_picks_the_closest_farther_negative():
    """Hand-computed: anchor 0 at 0, positive at 1, negatives at 0.5, 1.5, 3 (1-D)."""
    embeddings = np.array([[0.0], [1.0], [0.5], [1.5], [3.0]], "float32")
    labels = np.array([0, 0, 1, 2, 3])
    # Pair (0, 1): d = 1, semi-hard negative at 1.5 -> relu(1 - 1.5 + 1) = 0.5.
    # Pair (1, 0): d = 1, negatives at 0.5, 0.5, 2 -> farther: 2 -> relu(1 - 2 + 1) = 0.
    result = semi_hard_triplet_loss(labels, embeddings, margin=1.0)
    np.testing.assert_allclose(as_float(result), 0.25, rtol=1e-6)


# --------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "function", [batch_all_triplet_loss, batch_hard_triplet_loss, semi_hard_triplet_loss]
)
@pytest.mark.parametrize(
    "labels", [np.zeros(6, "int32"), np.arange(6, dtype="int32")], ids=["one_class", "singletons"]
)
def test_no_valid_triplet_gives_zero(function, labels, rng):
    embeddings = rng.normal(size=(6, 4)).astype("float32")
    assert as_float(function(labels, embeddings)) == 0.0
    for grad in gradient(lambda e: function(labels, e), embeddings):
        assert np.all(np.isfinite(grad))
        np.testing.assert_array_equal(grad, 0.0)
    assert as_float(fraction_positive_triplets(labels, embeddings)) == 0.0


@pytest.mark.parametrize("shape", [(-1,), (-1, 1)], ids=["flat", "column"])
@pytest.mark.parametrize("dtype", ["int8", "int32", "int64"])
@pytest.mark.parametrize("loss_name", sorted(REFERENCES))
def test_label_dtypes_and_shapes(loss_name, dtype, shape):
    function, reference, options = REFERENCES[loss_name]
    labels, embeddings = random_batch(3, size=24, num_classes=4)
    expected = reference(labels, embeddings, 1.0, "euclidean", False, **options)
    result = function(labels.astype(dtype).reshape(shape), embeddings, **options)
    np.testing.assert_allclose(as_float(result), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("loss_name", sorted(REFERENCES))
def test_half_precision_embeddings(loss_name, dtype):
    function, reference, options = REFERENCES[loss_name]
    labels, embeddings = random_batch(4, size=24, num_classes=4)
    half = ops.cast(embeddings, dtype)
    result = function(labels, half, margin=1.0, **options)
    assert ops.dtype(result) == "float32"
    # Exactly the float32 loss of the rounded embeddings, and close to the unrounded one.
    rounded = ops.convert_to_numpy(ops.cast(half, "float32"))
    expected = reference(labels, rounded, 1.0, "euclidean", False, **options)
    np.testing.assert_allclose(as_float(result), expected, rtol=1e-4, atol=1e-6)
    full = as_float(function(labels, embeddings, margin=1.0, **options))
    np.testing.assert_allclose(as_float(result), full, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("loss_name", sorted(REFERENCES))
def test_identical_embeddings(loss_name, distance):
    """Every distance is 0: each loss is the margin (log 2 when soft), gradients are finite."""
    function, _, options = REFERENCES[loss_name]
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    embeddings = np.tile(np.array([[0.3, -1.2, 0.5, 2.0]], "float32"), (7, 1))
    margin = 0.7
    expected = math.log(2.0) if options.get("soft") else margin
    result = function(labels, embeddings, margin=margin, distance=distance, **options)
    np.testing.assert_allclose(as_float(result), expected, rtol=1e-5, atol=1e-6)
    (grad,) = gradient(
        lambda e: function(labels, e, margin=margin, distance=distance, **options), embeddings
    )
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("loss_name", sorted(REFERENCES))
def test_gradients_are_finite_and_nonzero(loss_name, distance, normalize):
    function, _, options = REFERENCES[loss_name]
    labels, embeddings = random_batch(5, size=24, num_classes=3)
    embeddings[1] = embeddings[0]  # a zero distance inside the batch
    embeddings[2] = 0.0  # a zero embedding (normalize, cosine)
    (grad,) = gradient(
        lambda e: function(
            labels, e, margin=1.0, distance=distance, normalize=normalize, **options
        ),
        embeddings,
    )
    assert np.all(np.isfinite(grad))
    assert np.any(grad != 0.0)


def test_triplet_loss_gradient_is_finite_at_zero_distance(rng):
    anchor = rng.normal(size=(4, 3)).astype("float32")
    for grad in gradient(
        lambda a, p, n: triplet_loss(a, p, n), anchor, anchor.copy(), anchor.copy()
    ):
        assert np.all(np.isfinite(grad))


def test_unknown_distance_is_rejected():
    with pytest.raises(ValueError, match="distance='.*' is unknown"):
        batch_hard_triplet_loss([0, 1], [[0.0], [1.0]], distance="l1")
    with pytest.raises(ValueError, match="distance='.*' is unknown"):
        TripletSemiHardLoss(distance="l1")


# --------------------------------------------------------------------------
# Keras Loss classes
# --------------------------------------------------------------------------

LOSS_CLASSES = {
    TripletBatchAllLoss: "batch_all",
    TripletHardLoss: "batch_hard_soft",
    TripletSemiHardLoss: "semi_hard",
}


@pytest.mark.parametrize("loss_class", list(LOSS_CLASSES), ids=lambda cls: cls.__name__)
def test_loss_class_calls_its_function(loss_class):
    _, reference, options = REFERENCES[LOSS_CLASSES[loss_class]]
    labels, embeddings = random_batch(6, size=24, num_classes=4)
    loss = loss_class(margin=0.5, distance="cosine", normalize=True, **options)
    expected = reference(labels, embeddings, 0.5, "cosine", True, **options)
    np.testing.assert_allclose(as_float(loss(labels, embeddings)), expected, rtol=1e-4, atol=1e-6)


def test_triplet_loss_class_splits_concatenated_embeddings(rng):
    anchor, positive, negative = rng.normal(size=(3, 5, 4)).astype("float32")
    loss = TripletLoss(margin=0.5, distance="squared_euclidean")
    expected = np.mean(
        ops.convert_to_numpy(triplet_loss(anchor, positive, negative, 0.5, "squared_euclidean"))
    )
    value = loss(np.zeros(5), np.concatenate([anchor, positive, negative], axis=1))
    np.testing.assert_allclose(as_float(value), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "loss",
    [
        TripletLoss(margin=0.2, distance="cosine", soft=True),
        TripletBatchAllLoss(margin=0.3, distance="squared_euclidean", normalize=True),
        TripletHardLoss(margin=0.4, soft=True, name="hard"),
        TripletSemiHardLoss(margin=0.5, distance="cosine"),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_loss_config_round_trip(loss):
    config = loss.get_config()
    restored = type(loss).from_config(config)
    assert restored.get_config() == config
    assert restored.options == loss.options
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(revived) is type(loss)
    assert revived.get_config() == config


def test_get_by_name():
    assert isinstance(get("semi_hard", margin=0.2), TripletSemiHardLoss)
    assert get("batch_hard", soft=True).options["soft"] is True
    with pytest.raises(ValueError, match="loss='.*' is unknown: choose one of semi_hard"):
        get("hardest")


@pytest.mark.parametrize("loss_class", list(LOSS_CLASSES), ids=lambda cls: cls.__name__)
def test_loss_class_in_compile_and_fit(loss_class, rng):
    labels = np.repeat(np.arange(4), 8).astype("int32")
    features = (rng.normal(size=(4, 6))[labels] + 0.5 * rng.normal(size=(32, 6))).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5)])
    _, reference, options = REFERENCES[LOSS_CLASSES[loss_class]]
    model.compile(optimizer="adam", loss=loss_class(margin=0.5, **options))
    history = model.fit(features, labels, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    value = model.evaluate(features, labels, batch_size=32, verbose=0)
    expected = reference(
        labels, model.predict(features, verbose=0), 0.5, "euclidean", False, **options
    )
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------
# Bad input, refused at the door with a message that names it (issue 14)
# --------------------------------------------------------------------------

MINING_FUNCTIONS = [semi_hard_triplet_loss, batch_hard_triplet_loss, batch_all_triplet_loss, fraction_positive_triplets]


@pytest.mark.parametrize("loss_fn", MINING_FUNCTIONS)
def test_string_labels_are_refused_by_name(loss_fn, rng):
    embeddings = rng.normal(size=(16, 4)).astype("float32")
    labels = ["a", "a", "b", "b"] * 4
    with pytest.raises(ValueError, match=r"^labels \['a', 'a', 'b'\]\.\.\. are not integer class ids"):
        loss_fn(labels, embeddings)


@pytest.mark.parametrize("loss_fn", MINING_FUNCTIONS)
def test_labels_shorter_than_the_batch_are_refused(loss_fn, rng):
    embeddings = ops.convert_to_tensor(rng.normal(size=(16, 4)).astype("float32"))
    with pytest.raises(ValueError, match=r"^labels has 10 entries but embeddings has 16 rows"):
        loss_fn(np.arange(10) % 3, embeddings)


@pytest.mark.parametrize("loss_class", [TripletSemiHardLoss, TripletHardLoss, TripletBatchAllLoss])
def test_loss_classes_check_labels_before_keras_casts_them(loss_class, rng):
    embeddings = rng.normal(size=(16, 4)).astype("float32")
    with pytest.raises(ValueError, match="not integer class ids"):
        loss_class()(np.array(["x", "y"] * 8), embeddings)
    with pytest.raises(ValueError, match="10 entries but embeddings has 16 rows"):
        loss_class()(np.arange(10), embeddings)


@pytest.mark.parametrize("margin", [float("nan"), -1.0, float("inf")])
@pytest.mark.parametrize("loss_class", [TripletLoss, TripletSemiHardLoss, TripletHardLoss, TripletBatchAllLoss])
def test_bad_margins_are_refused_by_the_classes(loss_class, margin):
    with pytest.raises(ValueError, match=r"^margin=.* is not a valid margin: expected a finite number >= 0"):
        loss_class(margin=margin)


@pytest.mark.parametrize("margin", [float("nan"), -0.5])
def test_bad_margins_are_refused_by_the_functions(margin, rng):
    embeddings = rng.normal(size=(8, 4)).astype("float32")
    with pytest.raises(ValueError, match="is not a valid margin"):
        triplet_loss(embeddings, embeddings, embeddings, margin=margin)
    with pytest.raises(ValueError, match="is not a valid margin"):
        semi_hard_triplet_loss(np.arange(8) % 2, embeddings, margin=margin)


@pytest.mark.parametrize("loss", [TripletSemiHardLoss(), TripletHardLoss(), TripletBatchAllLoss()])
def test_nan_embeddings_give_a_nan_loss_under_jit(loss, rng):
    """XLA's CPU max drops NaNs (relu(NaN) = 0); the loss must still be NaN, or a divergence is silent."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(loss=loss, jit_compile=keras.backend.backend() != "torch")
    images = rng.normal(size=(8, 4)).astype("float32")
    images[2] = np.nan
    assert np.isnan(model.evaluate(images, np.arange(8) % 2, verbose=0))
