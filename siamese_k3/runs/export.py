"""Exporting a run's embedding model for serving without keras: a TF SavedModel folder or an ONNX file.

The artifact maps a batch of raw images (any batch size, float32, as
`siamese_k3.runs.inference.embed` reads them) to their embeddings. A SavedModel's
endpoint is ``tf.saved_model.load(path).serve(images)``; an ONNX file has one input.
"""

import importlib.util
import logging

import keras
import numpy as np

from siamese_k3.backend.exporters import EXPORT_REQUIREMENTS, export_caveat
from siamese_k3.checks import check_choice
from siamese_k3.errors import SiameseK3Error

logger = logging.getLogger("siamese_k3")

EXPORT_FORMATS = {"savedmodel": "tf_saved_model", "onnx": "onnx"}
EXPORT_NAMES = {"savedmodel": "embedding_savedmodel", "onnx": "embedding.onnx"}


def export_model(model, input_shape, export_format, output):
    """Write `model` (an embedding model taking `input_shape` images) as `export_format` at `output`."""
    check_choice(export_format, EXPORT_FORMATS, "export_format")
    backend = keras.backend.backend()
    check_export_requirements(export_format, backend)
    model(np.zeros((1, *input_shape), "float32"), training=False)  # the torch exporter wants a called model
    caveat = export_caveat(model, export_format, backend)
    if caveat:
        logger.warning(caveat)
    model.export(output, format=EXPORT_FORMATS[export_format], verbose=False)
    return output


def check_export_requirements(export_format, backend):
    """Raise SiameseK3Error naming every package `export_format` needs on `backend` that is missing."""
    missing = [
        (module, package)
        for module, package in EXPORT_REQUIREMENTS[export_format, backend]
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        modules, packages = zip(*missing)
        raise SiameseK3Error(
            f"exporting {export_format} on the {backend} backend needs {', '.join(modules)}: "
            f"pip install {' '.join(packages)} (or export on another backend: embedding.keras loads on any)."
        )
