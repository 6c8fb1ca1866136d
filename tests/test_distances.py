"""siamese_k3.distances against a float64 numpy reference, on the active backend."""

import numpy as np
import pytest
from _grad import gradient
from keras import ops

from siamese_k3.distances import (
    DISTANCES,
    l2_normalize,
    paired_distance,
    pairwise_distance,
    safe_sqrt,
)


def reference_distance(x, y, distance):
    """Float64 distance between the last axes of x and y (broadcasting)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if distance == "cosine":
        norms = np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
        return 1.0 - np.sum(x * y, axis=-1) / norms
    squared = np.sum((x - y) ** 2, axis=-1)
    return squared if distance == "squared_euclidean" else np.sqrt(squared)


def reference_pairwise(x, y, distance):
    return reference_distance(x[:, None, :], y[None, :, :], distance)


def as_numpy(tensor):
    return np.asarray(ops.convert_to_numpy(tensor))


@pytest.mark.parametrize("distance", DISTANCES)
def test_paired_matches_numpy(distance, rng):
    x = rng.normal(size=(17, 8)).astype("float32")
    y = rng.normal(size=(17, 8)).astype("float32")
    result = paired_distance(x, y, distance)
    assert tuple(result.shape) == (17,)
    np.testing.assert_allclose(
        as_numpy(result), reference_distance(x, y, distance), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("distance", DISTANCES)
def test_pairwise_matches_numpy(distance, rng):
    x = rng.normal(size=(13, 8)).astype("float32")
    y = rng.normal(size=(7, 8)).astype("float32")
    result = pairwise_distance(x, y, distance=distance)
    assert tuple(result.shape) == (13, 7)
    np.testing.assert_allclose(
        as_numpy(result), reference_pairwise(x, y, distance), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("distance", DISTANCES)
def test_pairwise_without_y_is_against_itself_with_zero_diagonal(distance, rng):
    x = rng.normal(size=(11, 8)).astype("float32")
    result = as_numpy(pairwise_distance(x, distance=distance))
    expected = reference_pairwise(x, x, distance)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.diag(result), np.zeros(11))


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean"])
def test_docstring_examples(distance):
    expected = 5.0 if distance == "euclidean" else 25.0
    np.testing.assert_allclose(
        as_numpy(paired_distance([[0.0, 0.0]], [[3.0, 4.0]], distance)), [expected]
    )
    np.testing.assert_allclose(
        as_numpy(pairwise_distance([[0.0, 0.0], [3.0, 4.0]], distance=distance)),
        [[0.0, expected], [expected, 0.0]],
    )


def test_cosine_of_zero_vector_is_one():
    zero, other = np.zeros((1, 4), "float32"), np.ones((1, 4), "float32")
    np.testing.assert_allclose(as_numpy(paired_distance(zero, other, "cosine")), [1.0])
    np.testing.assert_allclose(as_numpy(pairwise_distance(zero, other, distance="cosine")), [[1.0]])


@pytest.mark.parametrize("scale", [1e-5, 1e-3, 1.0])
def test_small_distances_are_not_biased(scale):
    """No epsilon under the square root: a distance of 1e-5 comes out as 1e-5."""
    origin = np.zeros((1, 2), "float32")
    point = np.array([[3.0, 4.0]], "float32") * np.float32(scale / 5.0)
    expected = reference_distance(origin, point, "euclidean")
    np.testing.assert_allclose(as_numpy(paired_distance(origin, point)), expected, rtol=1e-6)
    np.testing.assert_allclose(
        as_numpy(pairwise_distance(origin, point)), expected[:, None], rtol=1e-6
    )


def test_safe_sqrt():
    squared = np.array([0.0, 1e-20, 1e-10, 4.0], "float32")
    np.testing.assert_allclose(
        as_numpy(safe_sqrt(squared)), np.sqrt(squared.astype(np.float64)), rtol=1e-6
    )
    (grad,) = gradient(safe_sqrt, squared)
    assert grad[0] == 0.0
    np.testing.assert_allclose(grad[1:], 0.5 / np.sqrt(squared[1:].astype(np.float64)), rtol=1e-6)


def test_l2_normalize(rng):
    x = rng.normal(size=(5, 6)).astype("float32")
    expected = x / np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
    np.testing.assert_allclose(as_numpy(l2_normalize(x)), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(
        as_numpy(l2_normalize(np.zeros((2, 3), "float32"))), np.zeros((2, 3))
    )


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_give_float32(distance, dtype, rng):
    x = ops.cast(rng.normal(size=(6, 8)), dtype)
    y = ops.cast(rng.normal(size=(6, 8)), dtype)
    x_rounded, y_rounded = (as_numpy(ops.cast(value, "float32")) for value in (x, y))
    paired = paired_distance(x, y, distance)
    pairwise = pairwise_distance(x, y, distance=distance)
    assert ops.dtype(paired) == "float32"
    assert ops.dtype(pairwise) == "float32"
    np.testing.assert_allclose(
        as_numpy(paired), reference_distance(x_rounded, y_rounded, distance), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        as_numpy(pairwise), reference_pairwise(x_rounded, y_rounded, distance), rtol=1e-5, atol=1e-5
    )


def test_integer_inputs_give_float32():
    result = paired_distance(np.array([[0, 0]], "int32"), np.array([[3, 4]], "int32"))
    assert ops.dtype(result) == "float32"
    np.testing.assert_allclose(as_numpy(result), [5.0])


def test_unknown_distance_is_rejected():
    with pytest.raises(ValueError, match="distance='manhattan' is unknown"):
        paired_distance([[0.0]], [[1.0]], "manhattan")
    with pytest.raises(ValueError, match="distance='l1' is unknown: choose one of euclidean, squared_euclidean, cosine"):
        pairwise_distance([[0.0]], distance="l1")


# --------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------


@pytest.mark.parametrize("distance", DISTANCES)
def test_gradient_is_zero_at_zero_distance(distance, rng):
    x = rng.normal(size=(5, 8)).astype("float32")
    for grads in (
        gradient(lambda a, b: paired_distance(a, b, distance), x, x.copy()),
        gradient(lambda a, b: pairwise_distance(a, b, distance=distance), x[:1], x[:1].copy()),
    ):
        for grad in grads:
            assert np.all(np.isfinite(grad))
            np.testing.assert_allclose(grad, 0.0, atol=1e-6)


@pytest.mark.parametrize("distance", DISTANCES)
def test_pairwise_gradient_is_finite_with_duplicates(distance, rng):
    """Rows repeated (zero off-diagonal distances) and a zero row: no NaN, no inf."""
    x = rng.normal(size=(4, 8)).astype("float32")
    x = np.concatenate([x, x, np.zeros((1, 8), "float32")])
    (grad_self,) = gradient(lambda a: pairwise_distance(a, distance=distance), x)
    grad_x, grad_y = gradient(lambda a, b: pairwise_distance(a, b, distance=distance), x, x.copy())
    for grad in (grad_self, grad_x, grad_y):
        assert np.all(np.isfinite(grad))


def test_euclidean_gradient_away_from_zero(rng):
    """d ||x - y|| / dx = (x - y) / ||x - y||."""
    x = rng.normal(size=(6, 8)).astype("float32")
    y = rng.normal(size=(6, 8)).astype("float32")
    grad_x, grad_y = gradient(lambda a, b: paired_distance(a, b), x, y)
    difference = x.astype(np.float64) - y
    expected = difference / np.linalg.norm(difference, axis=-1, keepdims=True)
    np.testing.assert_allclose(grad_x, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_y, -expected, rtol=1e-5, atol=1e-6)
