"""siamese_k3.checks: one-line `SiameseK3Error`s (ValueErrors) naming the argument, the value and what is expected."""

import re

import keras
import numpy as np
import pytest

from siamese_k3.checks import check_choice, check_labels, check_learning_rate, check_margin
from siamese_k3.errors import SiameseK3Error


def test_check_choice_is_the_one_unknown_name_message():
    assert check_choice("b", ("a", "b"), "kind") == "b" and check_choice(None, (None, "a"), "kind") is None
    with pytest.raises(SiameseK3Error) as caught:
        check_choice("z", ("a", "b"), "kind")
    assert str(caught.value) == "kind='z' is unknown: choose one of a, b."
    with pytest.raises(SiameseK3Error) as caught:
        check_choice(3, (None, "a"), "kind", also="or a path")
    assert str(caught.value) == "kind=3 is unknown: choose one of None, a, or a path."
    with pytest.raises(SiameseK3Error, match=r"^kind=\['a'\] is unknown"):  # not a name at all
        check_choice(["a"], ("a",), "kind")


@pytest.mark.parametrize("margin", [float("nan"), float("inf"), -1, -1e-9, "0.2", None, True])
def test_bad_margins_are_named(margin):
    with pytest.raises(ValueError, match=r"^margin=.* is not a valid margin: expected a finite number >= 0"):
        check_margin(margin)


@pytest.mark.parametrize("margin", [0, 0.0, 0.2, 1, np.float32(0.5), np.array(2.0)])
def test_good_margins_pass(margin):
    assert check_margin(margin) is margin


@pytest.mark.parametrize("rate", [0, 0.0, -1e-3, float("nan"), float("inf"), "1e-3"])
def test_bad_learning_rates_are_named(rate):
    with pytest.raises(ValueError, match=r"^learning_rate=.* is not a valid learning rate: expected a finite number > 0"):
        check_learning_rate(rate)


def test_learning_rate_schedules_and_numbers_pass():
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=10)
    assert check_learning_rate(schedule) is schedule
    assert check_learning_rate(3e-3) == 3e-3


def test_the_name_is_the_one_given():
    with pytest.raises(ValueError, match=r"^optimizer learning_rate=0 "):
        check_learning_rate(0, name="optimizer learning_rate")
    with pytest.raises(ValueError, match=r"^nan is not a valid margin"):
        check_margin(float("nan"), name=None)


@pytest.mark.parametrize(
    "labels",
    [["a", "a", "b", "b"], np.array(["x", "y", "x", "y"]), np.array([0.5, 1.0, 0.0, 2.0]), [object()] * 4],
)
def test_labels_that_are_not_class_ids_are_refused(labels):
    with pytest.raises(ValueError, match=r"^labels .* are not integer class ids .*np\.unique"):
        check_labels(labels, np.zeros((4, 2), "float32"))


@pytest.mark.parametrize("labels", [np.arange(4), [0, 0, 1, 1], np.array([1.0, 0.0, 1.0, 0.0]), np.array([[0], [1], [0], [1]])])
def test_integer_labels_pass(labels):
    check_labels(labels, np.zeros((4, 2), "float32"))


def test_a_label_count_that_is_not_the_batch_is_refused():
    with pytest.raises(ValueError, match=r"^labels has 10 entries but embeddings has 16 rows"):
        check_labels(np.arange(10), np.zeros((16, 8), "float32"))


def test_backend_tensors_are_checked_by_dtype_and_static_shape():
    embeddings = keras.ops.zeros((16, 8))
    check_labels(keras.ops.arange(16), embeddings)
    check_labels(keras.ops.cast(keras.ops.arange(16), "float32"), embeddings)  # as keras' Loss passes them
    with pytest.raises(ValueError, match="10 entries but embeddings has 16 rows"):
        check_labels(keras.ops.arange(10), embeddings)


@pytest.mark.parametrize("value, minimum, maximum", [(0, 1, None), (2.5, 0, None), (True, 0, None), ("3", 0, None),
                                                     (-1, 0, 2**32 - 1), (2**32, 0, 2**32 - 1)])
def test_check_integer_refuses_what_is_not_a_whole_number_in_range(value, minimum, maximum):
    from siamese_k3.checks import check_integer

    with pytest.raises(SiameseK3Error, match=f"^count={re.escape(repr(value))} must be "):
        check_integer(value, "count", minimum, maximum)


def test_check_integer_accepts_whole_numbers_and_check_seed_draws_one_when_none():
    from siamese_k3.checks import check_integer, check_seed

    assert check_integer(3.0, "count", 1) == 3 and type(check_integer(np.int64(4), "count")) is int
    seeds = {check_seed(None) for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= seed < 2**32 for seed in seeds)
    assert check_seed(7) == 7
