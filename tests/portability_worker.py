"""One side of the cross-backend check, run by tests/test_portability.py in a subprocess.

The backend is fixed per process ($KERAS_BACKEND), so the 3 × 3 matrix needs one
process per backend:

    python portability_worker.py save DIR BACKBONE...   # train, save, write the reference embeddings
    python portability_worker.py load DIR               # load every saved file, write its embeddings

`save` builds a SiameseModel around each backbone, trains it TRAIN_STEPS steps
(so BatchNormalization moving statistics move away from their 0/1 start),
saves DIR/<backend>/<backbone>/{model,embedding}.keras and writes reference.npy,
the in-memory trained backbone's embeddings of DIR/<backbone>.inputs.npy.
`load` writes, beside each file, ``<file>.<backend>.npy``: the loaded model's
embeddings of the same inputs; on torch also ``<file>.torch_tensor.npy``, the
embeddings of a `torch.Tensor` input, checked to come out as a `torch.Tensor`.
"""

import glob
import os
import sys

import keras
import numpy as np

from siamese_k3 import backbones
from siamese_k3.models import SiameseModel

TRAIN_STEPS = 2
BATCH_SIZE = 4

# Small versions of each backbone (pixels 0-255 in, as the CLI feeds them).
BACKBONES = {
    "fashion_mnist_dense": lambda: backbones.fashion_mnist_dense(rescale=1 / 255),
    "compact_cnn": lambda: backbones.compact_cnn(filters=(4, 8), hidden=16, embedding_dim=8, rescale=1 / 255),
    "resnet50_embedding": lambda: backbones.resnet50_embedding(
        input_shape=(32, 32, 3), weights=None, embedding_dim=8
    ),
}


def embeddings_of(model, inputs):
    return np.asarray(keras.ops.convert_to_numpy(model(inputs, training=False)))


def moved_batch_norms(model):
    """Names of the trainable BatchNormalization layers whose moving mean left 0."""
    return [
        layer.name
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
        and layer.trainable
        and np.any(keras.ops.convert_to_numpy(layer.moving_mean) != 0)
    ]


def save(directory, names):
    backend = keras.backend.backend()
    for name in names:
        keras.utils.set_random_seed(0)
        inputs = np.load(os.path.join(directory, f"{name}.inputs.npy"))
        backbone = BACKBONES[name]()
        model = SiameseModel(backbone, margin=0.5)
        # TensorFlow without XLA: what is saved does not depend on how the two steps were compiled, and XLA's
        # compile of the ResNet50 step was most of that worker's time (jax and torch keep their defaults).
        model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False if backend == "tensorflow" else None)
        rng = np.random.default_rng(1)
        triplets = tuple(
            rng.uniform(0, 255, (TRAIN_STEPS * BATCH_SIZE, *inputs.shape[1:])).astype("float32")
            for _ in range(3)
        )
        model.fit(triplets, batch_size=BATCH_SIZE, epochs=1, shuffle=False, verbose=0)
        has_batch_norm = any(
            isinstance(layer, keras.layers.BatchNormalization) for layer in backbone._flatten_layers()
        )
        if has_batch_norm and not moved_batch_norms(backbone):
            sys.exit(f"{name}: no BatchNormalization moving statistics changed in training")
        target = os.path.join(directory, backend, name)
        os.makedirs(target, exist_ok=True)
        model.save(os.path.join(target, "model.keras"))
        backbone.save(os.path.join(target, "embedding.keras"))
        np.save(os.path.join(target, "reference.npy"), embeddings_of(backbone, inputs))


def load(directory):
    backend = keras.backend.backend()
    for path in sorted(glob.glob(os.path.join(directory, "*", "*", "*.keras"))):
        name = os.path.basename(os.path.dirname(path))
        inputs = np.load(os.path.join(directory, f"{name}.inputs.npy"))
        loaded = keras.models.load_model(path)
        # model.keras holds the whole SiameseModel: its backbone is the embedding network.
        network = loaded.backbone if isinstance(loaded, SiameseModel) else loaded
        np.save(f"{path}.{backend}.npy", embeddings_of(network, inputs))
        if backend == "torch":
            np.save(f"{path}.torch_tensor.npy", torch_embeddings(network, inputs))


def torch_embeddings(network, inputs):
    """Embeddings of a torch.Tensor batch; fails unless they come out as torch.Tensor."""
    import torch

    embeddings = keras.ops.convert_to_tensor(network(torch.as_tensor(inputs), training=False))
    if not isinstance(embeddings, torch.Tensor) or not isinstance(torch.as_tensor(embeddings), torch.Tensor):
        sys.exit(f"expected a torch.Tensor, got {type(embeddings).__name__}")
    return embeddings.detach().cpu().numpy()


if __name__ == "__main__":
    mode, directory, *names = sys.argv[1:]
    if mode == "save":
        save(directory, names)
    else:
        load(directory)
