"""Distances between embeddings, written with `keras.ops` only.

Three distances, each in a *paired* form (row i of `x` against row i of `y`,
shape [B]) and a *pairwise* form (every row of `x` against every row of `y`,
shape [B, M]):

- ``"squared_euclidean"``: d(x, y) = ||x - y||²
- ``"euclidean"``:         d(x, y) = ||x - y||
- ``"cosine"``:            d(x, y) = 1 - ⟨x, y⟩ / (||x|| ||y||)

All of them compute in float32 (float16/bfloat16 inputs are upcast) and have
finite gradients everywhere, identical embeddings included.
"""

from keras import ops

from siamese_k3.checks import DISTANCES, check_distance  # noqa: F401  (re-exported: the names live with the checks)

# Norms are clamped at this value before dividing (cosine) so that a zero
# embedding gives a finite distance of 1 instead of NaN.
_NORM_EPSILON = 1e-12


def to_float32(x):
    """Upcast half-precision (or integer) tensors to float32; keep float64."""
    if not ops.is_tensor(x):
        x = ops.convert_to_tensor(x)
    if ops.dtype(x) not in ("float32", "float64"):
        x = ops.cast(x, "float32")
    return x


def safe_sqrt(squared):
    """sqrt(s) for s >= 0 whose gradient is 0 (not inf, not NaN) at s = 0.

        safe_sqrt(s) = sqrt(s + (1 - m)) · m,   m = sign(s)  (1 if s > 0, 0 if s = 0, NaN if NaN)

    sqrt never sees a zero, so the backward pass never evaluates
    1 / (2 sqrt(0)), and where s > 0 the value and gradient are exactly
    sqrt's (adding 0 and multiplying by 1 are exact); non-zero values are not
    biased at all (seed 000 used sqrt(max(s, eps)), which shifts every
    distance below sqrt(eps)). Same results as the "double where" trick with
    fewer, cheaper ops, which counts on PyTorch where each op is dispatched
    from Python. A NaN stays NaN, under jit too: a mask made with ``s > 0``
    would turn it into 0, as XLA rewrites a product with a converted
    comparison into a select.
    """
    if not ops.is_tensor(squared):
        squared = ops.convert_to_tensor(squared)
    positive = ops.sign(squared)
    return ops.sqrt(squared + (1.0 - positive)) * positive


def l2_normalize(x, axis=-1):
    """x / max(||x||, 1e-12) along `axis`.

    A division by a square root, both correctly rounded in IEEE arithmetic, rather
    than a product with ``rsqrt``, which TensorFlow's CPU kernels approximate to an
    ulp or so on some processors: c·e / |c| is then exactly ±e on every backend, so
    two embeddings of one direction are at cosine distance exactly 0.
    """
    x = to_float32(x)
    norm_sq = ops.sum(ops.square(x), axis=axis, keepdims=True)
    # a select, not ops.maximum: keras' torch maximum returns float32 for float64 inputs
    return x / ops.sqrt(ops.where(norm_sq < _NORM_EPSILON**2, _NORM_EPSILON**2, norm_sq))


def paired_distance(x, y, distance="euclidean"):
    """Distance between row i of `x` and row i of `y`.

    Args:
        x: tensor of shape [B, D].
        y: tensor of shape [B, D].
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.

    Returns:
        float32 tensor of shape [B].

    Example:
        >>> paired_distance([[0.0, 0.0]], [[3.0, 4.0]])  # -> [5.0]
    """
    check_distance(distance)
    x, y = to_float32(x), to_float32(y)
    if distance == "cosine":
        return 1.0 - ops.sum(l2_normalize(x) * l2_normalize(y), axis=-1)
    difference = x - y
    squared = ops.sum(difference * difference, axis=-1)
    if distance == "squared_euclidean":
        return squared
    return safe_sqrt(squared)


def inner_products(x, y):
    """⟨x_i, y_j⟩ for every row of `x` [B, D] and of `y` [M, D]: [B, M], in the inputs' dtype.

    float64 goes through `ops.einsum`: keras' torch `matmul` computes a float64
    product in float32 (its dtype rule gives float32); float32 and narrower keep
    `ops.matmul`, bit for bit what they always computed.
    """
    if ops.dtype(x) == "float64":
        return ops.einsum("id,jd->ij", x, y)
    return ops.matmul(x, ops.transpose(y))


def pairwise_distance(x, y=None, distance="euclidean"):
    """Distance between every row of `x` and every row of `y` (default: `x`).

    Squared euclidean is expanded as ||x||² - 2 ⟨x, y⟩ + ||y||², clamped at 0,
    so memory stays O(B·M) rather than O(B·M·D). When `y` is omitted the
    diagonal is exactly 0.

    Args:
        x: tensor [B, D].
        y: tensor [M, D] or None (then `y = x`).
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.

    Returns:
        float32 tensor of shape [B, M] (float64 for float64 inputs).

    Example:
        >>> pairwise_distance([[0.0, 0.0], [3.0, 4.0]])  # -> [[0, 5], [5, 0]]
    """
    check_distance(distance)
    x = to_float32(x)
    same = y is None
    y = x if same else to_float32(y)
    if distance == "cosine":
        result = 1.0 - inner_products(l2_normalize(x), l2_normalize(y))
    else:
        x_sq = ops.sum(ops.square(x), axis=-1, keepdims=True)
        y_sq = ops.sum(ops.square(y), axis=-1, keepdims=True)
        result = x_sq - 2.0 * inner_products(x, y) + ops.transpose(y_sq)
        result = ops.where(result > 0.0, result, 0.0)  # clamped at 0 (not ops.maximum: float32 on torch for float64)
    if same:
        result = result * (1.0 - ops.eye(ops.shape(x)[0], dtype=result.dtype))
    if distance == "euclidean":
        result = safe_sqrt(result)
    return result
