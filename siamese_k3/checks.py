"""Arguments checked at the door: one-line `SiameseK3Error`s naming the argument, value and what is expected.

Each message names the parameter as ``name=value`` (``distance='manhattan'``), which the CLI
spells as its flag (``--distance 'manhattan'``); `check_choice` is the one "unknown name" message.

Only what is known without running the computation is checked (Python numbers,
numpy arrays, static shapes and dtypes), so the losses stay traceable under
`jax.jit`, `tf.function` and `torch.compile`: a symbolic margin or labels
tensor passes through unchecked.
"""

import math
import numbers

import numpy as np

from siamese_k3.errors import SiameseK3Error

DISTANCES = ("euclidean", "squared_euclidean", "cosine")


def check_choice(value, choices, name, also=None):
    """`value` if it is one of `choices`; else the library's one "unknown name" error.

    ``SiameseK3Error: loss='quadruplet' is unknown: choose one of triplet, semi_hard, ...``, with
    `also` (what else is accepted, e.g. "or pairs:DIR for a folder of pairs") after the list.
    """
    if not isinstance(value, (str, type(None))) or value not in choices:
        listed = ", ".join("None" if choice is None else str(choice) for choice in choices)
        raise SiameseK3Error(f"{_named(name, value)} is unknown: choose one of {listed}{f', {also}' if also else ''}.")
    return value


def check_distance(distance, name="distance"):
    """`distance` if it names one of `DISTANCES`; else `SiameseK3Error` naming `name` and the choices."""
    return check_choice(distance, DISTANCES, name)


def check_margin(margin, name="margin"):
    """`margin` if it is a finite number >= 0 (tensors pass unchecked); else `SiameseK3Error` naming `name`."""
    if not _is_tensor(margin) and not _finite_number(margin, strictly_positive=False):
        raise SiameseK3Error(f"{_named(name, margin)} is not a valid margin: expected a finite number >= 0, such as 0.2 or 1.0.")
    return margin


def check_positive_number(value, name):
    """`value` if it is a finite number > 0 (tensors pass unchecked); else `SiameseK3Error` naming `name`."""
    if not _is_tensor(value) and not _finite_number(value, strictly_positive=True):
        raise SiameseK3Error(f"{_named(name, value)} is not valid: expected a finite number > 0, such as 0.1 or 2.0.")
    return value


MAX_SEED = 2**32 - 1


def check_integer(value, name, minimum=0, maximum=None):
    """`value` as an int if it is a whole number in [minimum, maximum]; else `SiameseK3Error` naming `name`.

    Whole floats (``3.0``) pass; booleans, fractions and non-numbers do not.
    """
    try:
        valid = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):
        valid = False
    if not valid or value < minimum or (maximum is not None and value > maximum):
        raise SiameseK3Error(f"{_named(name, value)} must be {integer_range(minimum, maximum)}.")
    return int(value)


def integer_range(minimum, maximum=None):
    """"a positive integer", "an integer >= 0", "an integer from 0 to 2**32 - 1": what `check_integer` wants."""
    if maximum is None:
        return "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    return f"an integer from {minimum} to {'2**32 - 1' if maximum == MAX_SEED else maximum}"


def check_seed(seed, name="seed"):
    """`seed` as an int in [0, 2**32 - 1]; a fresh random one when None. The one way seeds are taken.

    Every random draw in siamese_k3's data code then comes from
    ``numpy.random.default_rng([seed, stream...])`` (epoch, batch index, ...), so
    a batch depends on its coordinates only, never on what was drawn before.
    """
    if seed is None:
        return int(np.random.SeedSequence().entropy % (MAX_SEED + 1))
    return check_integer(seed, name, 0, MAX_SEED)


def check_learning_rate(learning_rate, name="learning_rate"):
    """`learning_rate` if it is a finite number > 0 (schedules and tensors pass); else `SiameseK3Error`."""
    if not (_is_tensor(learning_rate) or callable(learning_rate)) and not _finite_number(
        learning_rate, strictly_positive=True
    ):
        raise SiameseK3Error(
            f"{_named(name, learning_rate)} is not a valid learning rate: expected a finite number > 0, such as 1e-3."
        )
    return learning_rate


def check_labels(labels, embeddings):
    """Raise `SiameseK3Error` unless `labels` are integer class ids, one per row of `embeddings`.

    Accepted: integer or boolean dtypes, and floats holding whole numbers (keras'
    `Loss` hands labels over as float32; their values are checked only when they
    are concrete, i.e. numpy arrays or Python lists). The lengths are compared
    when both are static.
    """
    if _is_tensor(labels):
        dtype = _dtype_name(labels)
        if not dtype.startswith(("int", "uint", "bool", "float", "bfloat")):
            raise SiameseK3Error(
                f"labels have dtype {dtype}: expected integer class ids; map class names to integers first, "
                "for example np.unique(names, return_inverse=True)[1]."
            )
        count = _static_size(labels.shape)
    else:
        array = np.asarray(labels)
        if array.dtype.kind not in "iubf" or (array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0)):
            example = array.reshape(-1)[:3].tolist()
            raise SiameseK3Error(
                f"labels {example}... are not integer class ids (dtype {array.dtype}): map class names to "
                "integers first, for example np.unique(names, return_inverse=True)[1]."
            )
        count = array.size
    shape = np.shape(embeddings)  # a tensor's own (static) shape; lists go through numpy
    rows = shape[0] if shape else None
    if isinstance(count, int) and isinstance(rows, int) and count != rows:
        raise SiameseK3Error(
            f"labels has {count} entries but embeddings has {rows} rows: give one label per embedding "
            "(labels of shape [B] or [B, 1] for embeddings of shape [B, D])."
        )


def _named(name, value):
    """``name=value`` for the Python API; the value alone when `name` is None (argparse names the option)."""
    return repr(value) if name is None else f"{name}={value!r}"


def _finite_number(value, strictly_positive):
    """True for a real, finite Python or numpy number that is > 0 (`strictly_positive`) or >= 0."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool) or (
        isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf"
    )
    return real and math.isfinite(value) and (value > 0 if strictly_positive else value >= 0)


def _is_tensor(value):
    """A backend tensor or symbolic value (not a Python number, list or numpy array)."""
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (np.ndarray, np.generic))


def _dtype_name(tensor):
    import keras

    try:
        return keras.backend.standardize_dtype(tensor.dtype)
    except ValueError:
        return str(tensor.dtype)


def _static_size(shape):
    size = 1
    for dimension in shape:
        if not isinstance(dimension, int):
            return None
        size *= dimension
    return size
