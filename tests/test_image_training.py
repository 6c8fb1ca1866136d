"""End to end: SiameseModel(resnet50_embedding).fit(PairedImageFolders(...)) on the current backend."""

import time

import keras
import numpy as np
import pytest
from paired_folders import make_paired_folders

from siamese_k3.backbones import resnet50_embedding
from siamese_k3.data import PairedImageFolders
from siamese_k3.models import SiameseModel

SHAPE = (32, 32)


@pytest.mark.slow
def test_resnet50_trains_one_epoch_on_paired_folders(tmp_path):
    # 18 training pairs in 3 batches of 6 and 6 validation pairs in 2 batches of 3: every batch full, so each
    # of the train and test steps is traced (and, on TensorFlow, XLA-compiled) for one batch shape only.
    directory = make_paired_folders(tmp_path / "tll", count=24, size=SHAPE)
    training = PairedImageFolders(
        directory, target_shape=SHAPE, batch_size=6, seed=0,
        validation_split=0.25, subset="training",
    )
    validation = PairedImageFolders(
        directory, target_shape=SHAPE, batch_size=3, seed=0, shuffle=False,
        validation_split=0.25, subset="validation",
    )
    backbone = resnet50_embedding((*SHAPE, 3), weights=None, embedding_dim=32)
    model = SiameseModel(backbone, margin=0.5, distance="cosine")
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    start = time.perf_counter()
    history = model.fit(training, validation_data=validation, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    assert len(training) == 3 and len(validation) == 2
    print(f"resnet50 32x32, {len(training)} steps + validation: {seconds:.1f} s")
    assert np.isfinite(history.history["loss"][0])
    assert np.isfinite(history.history["val_loss"][0])
    embeddings = backbone.predict(validation.triplet_arrays()[0], verbose=0)
    assert embeddings.shape == (6, 32) and np.isfinite(embeddings).all()
