"""siamese_k3/losses/pairs.py against plain numpy loops written from the formulas (every backend), and against
pytorch-metric-learning itself, value and gradient in float64 (the torch session, which installs it)."""

import importlib.util
import math

import keras
import numpy as np
import pytest
from _grad import gradient
from keras import ops

from siamese_k3 import losses
from siamese_k3.errors import SiameseK3Error
from siamese_k3.losses import pairs

BACKEND = keras.backend.backend()
HAS_PML = BACKEND == "torch" and importlib.util.find_spec("pytorch_metric_learning") is not None

# --------------------------------------------------------------------------
# Independent float64 references: a loop per anchor and pair, as the docstrings say.
# --------------------------------------------------------------------------


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pairs(labels):
    n = len(labels)
    positives = [[j for j in range(n) if j != i and labels[j] == labels[i]] for i in range(n)]
    negatives = [[k for k in range(n) if labels[k] != labels[i]] for i in range(n)]
    return positives, negatives


def _mean_non_zero(values):
    kept = [value for value in values if value > 0]
    return sum(kept) / len(kept) if kept else 0.0


def _lse(values, add_one=False):
    values = list(values) + ([0.0] if add_one else [])
    if not values:
        return None
    top = max(values)
    return top + math.log(sum(math.exp(value - top) for value in values))


def ref_contrastive(labels, x, pos_margin=0.0, neg_margin=1.0):
    u = _unit(np.asarray(x, np.float64))
    positives, negatives = _pairs(labels)
    d = lambda i, j: float(np.linalg.norm(u[i] - u[j]))  # noqa: E731
    pos = [max(d(i, j) - pos_margin, 0.0) for i in range(len(labels)) for j in positives[i]]
    neg = [max(neg_margin - d(i, k), 0.0) for i in range(len(labels)) for k in negatives[i]]
    return _mean_non_zero(pos) + _mean_non_zero(neg)


def ref_multi_similarity(labels, x, alpha=2.0, beta=50.0, base=0.5, epsilon=None, frozen=None):
    u = _unit(np.asarray(x, np.float64))
    s = u @ u.T
    fixed = s if frozen is None else frozen
    positives, negatives = _pairs(labels)
    if epsilon is not None:
        kept_p, kept_n = [], []
        for i in range(len(labels)):
            if not any(positives) or not any(negatives):
                kept_p.append([]), kept_n.append([])
                continue
            hardest = max((fixed[i, k] for k in negatives[i]), default=-math.inf)
            easiest = min((fixed[i, j] for j in positives[i]), default=math.inf)
            kept_p.append([j for j in positives[i] if fixed[i, j] - epsilon < hardest])
            kept_n.append([k for k in negatives[i] if fixed[i, k] + epsilon > easiest])
        positives, negatives = kept_p, kept_n
    total = 0.0
    for i in range(len(labels)):
        if positives[i]:
            total += _lse([-alpha * (s[i, j] - base) for j in positives[i]], add_one=True) / alpha
        if negatives[i]:
            total += _lse([beta * (s[i, k] - base) for k in negatives[i]], add_one=True) / beta
    return total / len(labels)


def ref_circle(labels, x, m=0.4, gamma=80.0, frozen=None):
    u = _unit(np.asarray(x, np.float64))
    s = u @ u.T
    fixed = s if frozen is None else frozen
    positives, negatives = _pairs(labels)
    losses_ = []
    for i in range(len(labels)):
        if not positives[i] or not negatives[i]:
            continue
        p = _lse([-gamma * max(1 + m - fixed[i, j], 0.0) * (s[i, j] - (1 - m)) for j in positives[i]])
        n = _lse([gamma * max(fixed[i, k] + m, 0.0) * (s[i, k] - m) for k in negatives[i]])
        losses_.append(math.log1p(math.exp(p + n)) if p + n < 30 else p + n + math.log1p(math.exp(-(p + n))))
    return _mean_non_zero(losses_)


def ref_ntxent(labels, x, temperature=0.07):
    u = _unit(np.asarray(x, np.float64))
    s = u @ u.T / temperature
    positives, negatives = _pairs(labels)
    if not any(positives) or not any(negatives):
        return 0.0
    per_pair = []
    for i in range(len(labels)):
        for j in positives[i]:
            denominator = _lse([s[i, j]] + [s[i, k] for k in negatives[i]])
            per_pair.append(denominator - s[i, j])
    return sum(per_pair) / len(per_pair)


def ref_supcon(labels, x, temperature=0.1):
    u = _unit(np.asarray(x, np.float64))
    s = u @ u.T / temperature
    positives, negatives = _pairs(labels)
    if not any(positives) or not any(negatives):
        return 0.0
    per_anchor = []
    for i in range(len(labels)):
        if not positives[i]:
            continue
        denominator = _lse([s[i, j] for j in positives[i] + negatives[i]])
        per_anchor.append(-sum(s[i, j] - denominator for j in positives[i]) / len(positives[i]))
    return _mean_non_zero(per_anchor)


REFERENCES = {
    "contrastive": (pairs.contrastive_loss, ref_contrastive, [{}, {"pos_margin": 0.3, "neg_margin": 1.3}]),
    "multi_similarity": (pairs.multi_similarity_loss, ref_multi_similarity,
                         [{}, {"alpha": 1.0, "beta": 10.0, "base": 0.3}, {"epsilon": 0.1}]),
    "circle": (pairs.circle_loss, ref_circle, [{}, {"m": 0.25, "gamma": 32.0}]),
    "ntxent": (pairs.ntxent_loss, ref_ntxent, [{}, {"temperature": 0.5}]),
    "supcon": (pairs.supcon_loss, ref_supcon, [{}, {"temperature": 0.3}]),
}
CASES = [(name, index) for name, (_, _, options) in REFERENCES.items() for index in range(len(options))]


def _batch(seed=0, size=12, dim=6, classes=4):
    rng = np.random.default_rng(seed)
    labels = np.arange(size) % classes
    rng.shuffle(labels)
    return labels.astype("int32"), rng.normal(size=(size, dim)).astype("float32")


def _frozen(x):
    u = _unit(np.asarray(x, np.float64))
    return u @ u.T


@pytest.mark.parametrize("name, index", CASES)
def test_value_equals_the_numpy_loops(name, index):
    function, reference, options = REFERENCES[name]
    labels, x = _batch()
    value = float(ops.convert_to_numpy(function(labels, x, **options[index])))
    np.testing.assert_allclose(value, reference(labels, x, **options[index]), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name, index", CASES)
def test_gradient_equals_central_differences_of_the_numpy_loops(name, index):
    """Where a loss stops a gradient (circle's weights, the miner's choice), the reference holds those at the
    base point, as sg(·) does."""
    function, reference, options = REFERENCES[name]
    labels, x = _batch(seed=1, size=8, dim=4, classes=3)
    fixed = {"frozen": _frozen(x)} if name in ("circle", "multi_similarity") else {}
    (grad,) = gradient(lambda e: function(labels, e, **options[index]), x)
    x64, step = x.astype(np.float64), 1e-6
    numeric = np.zeros_like(x64)
    for position in np.ndindex(*x.shape):
        up, down = x64.copy(), x64.copy()
        up[position] += step
        down[position] -= step
        numeric[position] = (reference(labels, up, **options[index], **fixed)
                             - reference(labels, down, **options[index], **fixed)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_a_batch_without_negatives_or_positives(name):
    """One class only: no negative pair; all classes distinct: no positive pair. Finite, as PML's."""
    function, reference, _ = REFERENCES[name]
    _, x = _batch(size=6)
    for labels in (np.zeros(6, "int32"), np.arange(6, dtype="int32")):
        value = float(ops.convert_to_numpy(function(labels, x)))
        assert math.isfinite(value)
        np.testing.assert_allclose(value, reference(labels, x), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_a_nan_embedding_gives_a_nan_loss(name):
    function = REFERENCES[name][0]
    labels, x = _batch()
    x[3, 1] = np.nan
    assert math.isnan(float(ops.convert_to_numpy(function(labels, x))))


@pytest.mark.parametrize(
    "cls, options, message",
    [
        (pairs.ContrastiveLoss, {"neg_margin": -1.0}, "neg_margin"),
        (pairs.MultiSimilarityLoss, {"alpha": 0.0}, "alpha"),
        (pairs.CircleLoss, {"gamma": float("nan")}, "gamma"),
        (pairs.NTXentLoss, {"temperature": -0.1}, "temperature"),
        (pairs.SupConLoss, {"temperature": "hot"}, "temperature"),
    ],
)
def test_a_bad_hyperparameter_is_refused_naming_it(cls, options, message):
    with pytest.raises(SiameseK3Error, match=message):
        cls(**options)


@pytest.mark.parametrize("name", list(losses.PAIR_LOSSES))
def test_loss_classes_round_trip_their_config_and_equal_the_function(name):
    cls = losses.PAIR_LOSSES[name]
    function, _, options = REFERENCES[name]
    loss = losses.get(name, **options[-1])
    assert isinstance(loss, cls)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is cls and again.get_config() == loss.get_config()
    labels, x = _batch()
    np.testing.assert_allclose(float(ops.convert_to_numpy(again(labels, x))),
                               float(ops.convert_to_numpy(function(labels, x, **options[-1]))), rtol=1e-6)


@pytest.mark.parametrize("name", list(losses.PAIR_LOSSES))
def test_a_mining_model_trains_with_each_pair_loss(name):
    """`MiningModel` + `fit` on this backend (its fast path): a finite loss that falls over a few steps."""
    from siamese_k3 import MiningModel

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 8)
    images = (rng.normal(size=(4, 8))[labels] + 0.3 * rng.normal(size=(32, 8))).astype("float32")
    inputs = keras.Input((8,))
    model = MiningModel(keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Dense(16, activation="relu")(inputs))))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=losses.get(name))
    history = model.fit(images, labels, batch_size=32, epochs=8, shuffle=False, verbose=0).history["loss"]
    assert all(math.isfinite(value) for value in history) and history[-1] < history[0], history


# --------------------------------------------------------------------------
# pytorch-metric-learning, the oracle (torch session)
# --------------------------------------------------------------------------

PML_CASES = {
    "contrastive": ("ContrastiveLoss", [{}, {"pos_margin": 0.2, "neg_margin": 0.8}, {"pos_margin": 0.1, "neg_margin": 1.5}]),
    "multi_similarity": ("MultiSimilarityLoss", [{}, {"alpha": 1.0, "beta": 20.0, "base": 0.3},
                                                 {"alpha": 4.0, "beta": 40.0, "base": 0.7}]),
    "circle": ("CircleLoss", [{}, {"m": 0.25, "gamma": 256.0}, {"m": 0.25, "gamma": 128.0}]),
    "ntxent": ("NTXentLoss", [{}, {"temperature": 0.5}, {"temperature": 1.0}]),
    "supcon": ("SupConLoss", [{}, {"temperature": 0.07}, {"temperature": 0.5}]),
}


@pytest.mark.skipif(not HAS_PML, reason="pytorch-metric-learning is the torch session's oracle")
@pytest.mark.parametrize("name, index", [(name, index) for name in PML_CASES for index in range(3)])
def test_value_and_gradient_equal_pytorch_metric_learning(name, index):
    import torch
    from pytorch_metric_learning import losses as pml_losses

    class_name, options = PML_CASES[name][0], PML_CASES[name][1][index]
    labels, x = _batch(seed=index, size=16, dim=8, classes=4)
    theirs_x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    theirs = getattr(pml_losses, class_name)(**options)(theirs_x, torch.tensor(labels, dtype=torch.long))
    (their_grad,) = torch.autograd.grad(theirs, theirs_x)
    ours_x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ours = REFERENCES[name][0](torch.tensor(labels), ours_x, **options)
    (our_grad,) = torch.autograd.grad(ours, ours_x)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.item(), theirs.item(), rtol=1e-5)
    np.testing.assert_allclose(our_grad.numpy(), their_grad.numpy(), rtol=1e-5, atol=1e-12)


@pytest.mark.skipif(not HAS_PML, reason="pytorch-metric-learning is the torch session's oracle")
@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_the_multi_similarity_miner_equals_pytorch_metric_learnings(epsilon):
    import torch
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import miners

    labels, x = _batch(seed=3, size=16, dim=8, classes=4)
    theirs_x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    torch_labels = torch.tensor(labels, dtype=torch.long)
    mined = miners.MultiSimilarityMiner(epsilon=epsilon)(theirs_x, torch_labels)
    theirs = pml_losses.MultiSimilarityLoss()(theirs_x, torch_labels, mined)
    (their_grad,) = torch.autograd.grad(theirs, theirs_x)
    ours_x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ours = pairs.multi_similarity_loss(torch.tensor(labels), ours_x, epsilon=epsilon)
    (our_grad,) = torch.autograd.grad(ours, ours_x)
    np.testing.assert_allclose(ours.item(), theirs.item(), rtol=1e-5)
    np.testing.assert_allclose(our_grad.numpy(), their_grad.numpy(), rtol=1e-5, atol=1e-12)


def test_the_configs_option_table_is_each_loss_classes_signature():
    """runs/config.py names every loss's options (checked before keras is imported): they are the classes'."""
    import inspect

    from siamese_k3.runs.config import MINING_LOSS_OPTIONS, PAIR_LOSS_OPTIONS, PROXY_LOSS_OPTIONS

    run_options = {"margin", "distance"}  # a mining loss takes these from the run
    for table, registry in ((PAIR_LOSS_OPTIONS, losses.PAIR_LOSSES), (MINING_LOSS_OPTIONS, losses.MINING_LOSSES),
                            (PROXY_LOSS_OPTIONS, losses.PROXY_LOSSES)):
        assert set(table) == set(registry)
        for name, cls in registry.items():
            parameters = set(inspect.signature(cls.__init__).parameters) - {"self", "name", "kwargs"}
            expected = parameters - (run_options if table is MINING_LOSS_OPTIONS else set())
            if table is PROXY_LOSS_OPTIONS:
                expected |= {"proxy_lr_multiplier"}  # for the model's Proxies layer
            assert set(table[name]) == expected, name


@pytest.mark.parametrize("name", list(REFERENCES))
def test_bfloat16_embeddings_give_a_finite_float32_loss_near_float32s(name):
    """Under mixed_bfloat16 a backbone outputs bfloat16: the loss upcasts, so it stays finite."""
    function = REFERENCES[name][0]
    labels, x = _batch()
    rounded = ops.cast(ops.cast(x, "bfloat16"), "float32")
    value = function(labels, ops.cast(x, "bfloat16"))
    assert ops.dtype(value) == "float32" and math.isfinite(float(ops.convert_to_numpy(value)))
    np.testing.assert_allclose(float(ops.convert_to_numpy(value)),
                               float(ops.convert_to_numpy(function(labels, rounded))), rtol=1e-5)
