"""Keras metrics for embedding training, thin wrappers of functions in `siamese_k3.losses`."""

import keras

from siamese_k3.backend import distributed
from siamese_k3.losses import fraction_positive_triplets


@keras.saving.register_keras_serializable(package="siamese_k3")
class FractionPositiveTriplets(keras.metrics.MeanMetricWrapper):
    """Mean over batches of `fraction_positive_triplets`: the share of valid triplets of a
    labelled batch that still violate the margin (relu(d(a,p) - d(a,n) + m) > 0).

    The number to watch beside a batch-all loss, which averages over exactly those
    triplets and so need not fall while the embedding improves: this fraction does.
    Compile a backbone with it next to a mining loss (``metrics=[...]``); keras
    logs it as ``fraction_positive_triplets`` and ``val_fraction_positive_triplets``.
    Under data-parallel training it is the fraction of the global batch (on
    TensorFlow the mean of the replicas' fractions of their own rows).
    """

    def __init__(self, margin=1.0, distance="euclidean", normalize=False, name="fraction_positive_triplets", dtype=None):
        super().__init__(
            fraction_positive_triplets, name=name, dtype=dtype, margin=margin, distance=distance, normalize=normalize
        )
        self.options = {"margin": margin, "distance": distance, "normalize": normalize}

    def update_state(self, y_true, y_pred, sample_weight=None):
        # Under data-parallel training: the fraction of the global batch, as the mining losses
        # mine it (on tensorflow, the mean of the replicas' own fractions: see `gather_for_metrics`).
        gather = distributed.gather_for_metrics
        if sample_weight is not None:
            sample_weight = gather(sample_weight)
        return super().update_state(gather(y_true), gather(y_pred), sample_weight)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, **self.options}
