"""siamese_k3/losses/proxies.py against plain numpy loops written from the formulas (every backend), and against
pytorch-metric-learning itself, value and gradients (embeddings and proxies) in float64 (the torch session)."""

import importlib.util
import math

import keras
import numpy as np
import pytest
from _grad import gradient
from keras import ops

from siamese_k3.errors import SiameseK3Error
from siamese_k3.losses import proxies

BACKEND = keras.backend.backend()
HAS_PML = BACKEND == "torch" and importlib.util.find_spec("pytorch_metric_learning") is not None


def _cosines(x, w):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T


def _lse(values):
    top = max(values)
    return top + math.log(sum(math.exp(value - top) for value in values))


def ref_arcface(labels, x, w, margin=28.6, scale=64.0):
    s, m = _cosines(x, w), math.radians(margin)
    total = 0.0
    for i, y in enumerate(labels):
        theta = math.acos(min(max(s[i, y], -1.0), 1.0))
        own = math.cos(theta + m) if theta <= math.pi - m else s[i, y] - m * math.sin(m)
        logits = [scale * (own if c == y else s[i, c]) for c in range(len(w))]
        total += _lse(logits) - logits[y]
    return total / len(labels)


def ref_cosface(labels, x, w, margin=0.35, scale=64.0):
    s = _cosines(x, w)
    total = 0.0
    for i, y in enumerate(labels):
        logits = [scale * (s[i, c] - (margin if c == y else 0.0)) for c in range(len(w))]
        total += _lse(logits) - logits[y]
    return total / len(labels)


def ref_proxy_anchor(labels, x, w, margin=0.1, alpha=32.0):
    s = _cosines(x, w)
    present = sorted(set(int(y) for y in labels))
    positive = sum(_lse([0.0] + [-alpha * (s[i, c] - margin) for i in range(len(labels)) if labels[i] == c])
                   for c in present)
    negative = sum(_lse([0.0] + [alpha * (s[i, c] + margin) for i in range(len(labels)) if labels[i] != c])
                   for c in range(len(w)))
    return positive / max(len(present), 1) + negative / len(w)


REFERENCES = {
    "arcface": (proxies.arcface_loss, ref_arcface, [{}, {"margin": 10.0, "scale": 16.0}]),
    "cosface": (proxies.cosface_loss, ref_cosface, [{}, {"margin": 0.2, "scale": 30.0}]),
    "proxy_anchor": (proxies.proxy_anchor_loss, ref_proxy_anchor, [{}, {"margin": 0.2, "alpha": 16.0}]),
}
CASES = [(name, index) for name, (_, _, options) in REFERENCES.items() for index in range(len(options))]


def _batch(seed=0, size=12, dim=6, classes=5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes - 1, size).astype("int32")  # the last class has no row in the batch
    return labels, rng.normal(size=(size, dim)).astype("float32"), rng.normal(size=(classes, dim)).astype("float32")


@pytest.mark.parametrize("name, index", CASES)
def test_value_equals_the_numpy_loops(name, index):
    function, reference, options = REFERENCES[name]
    labels, x, w = _batch()
    value = float(ops.convert_to_numpy(function(labels, x, w, **options[index])))
    np.testing.assert_allclose(value, reference(labels, x, w, **options[index]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, index", CASES)
def test_gradients_equal_central_differences_of_the_numpy_loops(name, index):
    function, reference, options = REFERENCES[name]
    labels, x, w = _batch(seed=1, size=6, dim=4, classes=4)
    options = {**options[index], "scale": 4.0} if "scale" in function.__code__.co_varnames else options[index]
    if name == "proxy_anchor":
        options = {**options, "alpha": 4.0}
    grads = gradient(lambda e, p: function(labels, e, p, **options), x, w)
    step = 1e-6
    for which, (array, grad) in enumerate(zip((x, w), grads)):
        numeric = np.zeros(array.shape)
        for position in np.ndindex(*array.shape):
            moved = [x.astype(np.float64), w.astype(np.float64)]
            up, down = moved[which].copy(), moved[which].copy()
            up[position] += step
            down[position] -= step
            args_up = [up, moved[1]] if which == 0 else [moved[0], up]
            args_down = [down, moved[1]] if which == 0 else [moved[0], down]
            numeric[position] = (reference(labels, *args_up, **options) - reference(labels, *args_down, **options)) / (2 * step)
        np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-4, err_msg=("embeddings", "proxies")[which])


@pytest.mark.parametrize("name", list(REFERENCES))
def test_a_nan_embedding_gives_a_nan_loss(name):
    labels, x, w = _batch()
    x[2, 0] = np.nan
    assert math.isnan(float(ops.convert_to_numpy(REFERENCES[name][0](labels, x, w))))


@pytest.mark.parametrize("function, options, message", [
    (proxies.arcface_loss, {"scale": 0.0}, "scale"),
    (proxies.cosface_loss, {"margin": -0.1}, "margin"),
    (proxies.proxy_anchor_loss, {"alpha": float("inf")}, "alpha"),
])
def test_a_bad_hyperparameter_is_refused_naming_it(function, options, message):
    labels, x, w = _batch()
    with pytest.raises(SiameseK3Error, match=message):
        function(labels, x, w, **options)


PML_CASES = {
    "arcface": ("ArcFaceLoss", [{}, {"margin": 10.0, "scale": 30.0}, {"margin": 45.0, "scale": 16.0}]),
    "cosface": ("CosFaceLoss", [{}, {"margin": 0.2, "scale": 30.0}, {"margin": 0.5, "scale": 10.0}]),
    "proxy_anchor": ("ProxyAnchorLoss", [{}, {"margin": 0.2, "alpha": 16.0}, {"margin": 0.05, "alpha": 64.0}]),
}


@pytest.mark.skipif(not HAS_PML, reason="pytorch-metric-learning is the torch session's oracle")
@pytest.mark.parametrize("name, index", [(name, index) for name in PML_CASES for index in range(3)])
def test_value_and_gradients_equal_pytorch_metric_learning(name, index):
    """PML's own weights (ArcFace and CosFace keep them as [D, C]: ours are its transpose)."""
    import torch
    from pytorch_metric_learning import losses as pml_losses

    class_name, options = PML_CASES[name][0], PML_CASES[name][1][index]
    labels, x, _ = _batch(seed=index, size=16, dim=8, classes=6)
    torch.manual_seed(index)
    theirs_loss = getattr(pml_losses, class_name)(num_classes=6, embedding_size=8, **options).double()
    weights = theirs_loss.proxies if name == "proxy_anchor" else theirs_loss.W
    theirs_x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    theirs = theirs_loss(theirs_x, torch.tensor(labels, dtype=torch.long))
    their_grads = torch.autograd.grad(theirs, [theirs_x, weights])
    ours_x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ours_w = (weights if name == "proxy_anchor" else weights.t()).detach().clone().requires_grad_(True)
    ours = REFERENCES[name][0](torch.tensor(labels), ours_x, ours_w, **options)
    our_grads = torch.autograd.grad(ours, [ours_x, ours_w])
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.item(), theirs.item(), rtol=1e-5)
    np.testing.assert_allclose(our_grads[0].numpy(), their_grads[0].numpy(), rtol=1e-5, atol=1e-12)
    their_w_grad = their_grads[1] if name == "proxy_anchor" else their_grads[1].t()
    np.testing.assert_allclose(our_grads[1].numpy(), their_w_grad.numpy(), rtol=1e-5, atol=1e-12)


# --------------------------------------------------------------------------
# The proxies as weights of MiningModel
# --------------------------------------------------------------------------


def _clusters(seed=0, classes=4, per_class=16, dim=8):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class).astype("int32")
    return (rng.normal(size=(classes, dim))[labels] + 0.3 * rng.normal(size=(len(labels), dim))).astype("float32"), labels


def _proxy_model(loss, lr_multiplier=1.0):
    from siamese_k3 import MiningModel

    inputs = keras.Input((8,))
    backbone = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Dense(16, activation="relu")(inputs)))
    model = MiningModel(backbone, proxies=proxies.Proxies(4, lr_multiplier=lr_multiplier))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    return model


@pytest.mark.parametrize("name", ["arcface", "cosface", "proxy_anchor"])
def test_a_mining_model_trains_its_proxies_and_saves_them_apart_from_the_backbone(name, tmp_path):
    from siamese_k3 import losses
    from siamese_k3.models import standalone_embedding

    x, labels = _clusters()
    model = _proxy_model(losses.get(name, scale=16.0) if name != "proxy_anchor" else losses.get(name))
    before = ops.convert_to_numpy(model.proxies.proxies).copy()
    history = model.fit(x, labels, batch_size=32, epochs=6, verbose=0).history["loss"]
    assert all(math.isfinite(value) for value in history) and history[-1] < history[0], history
    trained = ops.convert_to_numpy(model.proxies.proxies)
    assert not np.allclose(trained, before)  # the optimizer trains them
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded.proxies.proxies), trained)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert loaded.loss.get_config()["margin"] == model.loss.get_config()["margin"]
    loaded.fit(x, labels, batch_size=32, epochs=1, verbose=0)  # the loaded loss reads the loaded proxies
    embedding = standalone_embedding(model.backbone)  # the backbone has no [4, 4] weight; the proxies are [4, 4]
    assert len(embedding.weights) == len(model.backbone.weights) == len(model.weights) - 1
    assert all(tuple(weight.shape) != (4, 4) for weight in embedding.weights)


def test_a_proxy_loss_needs_the_models_proxies():
    from siamese_k3 import MiningModel

    inputs = keras.Input((8,))
    model = MiningModel(keras.Model(inputs, keras.layers.Dense(4)(inputs)))
    with pytest.raises(SiameseK3Error, match=r"MiningModel\(backbone, proxies=siamese_k3.Proxies\(num_classes\)\)"):
        model.compile(loss=proxies.ArcFaceLoss())


def test_the_lr_multiplier_scales_adams_step_on_the_proxies_not_their_start():
    x, labels = _clusters()
    moves = {}
    for multiplier in (1.0, 10.0):
        keras.utils.set_random_seed(7)
        model = _proxy_model(proxies.CosFaceLoss(scale=16.0), lr_multiplier=multiplier)
        start = ops.convert_to_numpy(model.proxies.proxies).copy()
        if multiplier == 1.0:
            first_start = start
        np.testing.assert_allclose(start, first_start, rtol=1e-6)
        model.fit(x, labels, batch_size=64, epochs=1, verbose=0)  # one Adam step: |Δ| ≈ lr · multiplier
        moves[multiplier] = np.abs(ops.convert_to_numpy(model.proxies.proxies) - start)
    np.testing.assert_allclose(moves[10.0], 10.0 * moves[1.0], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_bfloat16_embeddings_give_a_finite_float32_loss_near_float32s(name):
    """Under mixed_bfloat16 a backbone outputs bfloat16 and the proxies stay float32: the loss upcasts."""
    function = REFERENCES[name][0]
    labels, x, w = _batch()
    rounded = ops.cast(ops.cast(x, "bfloat16"), "float32")
    value = function(labels, ops.cast(x, "bfloat16"), w)
    assert ops.dtype(value) == "float32" and math.isfinite(float(ops.convert_to_numpy(value)))
    np.testing.assert_allclose(float(ops.convert_to_numpy(value)),
                               float(ops.convert_to_numpy(function(labels, rounded, w))), rtol=1e-5)
