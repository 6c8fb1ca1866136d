"""siamese_k3: Siamese networks and triplet losses for Keras 3 on TensorFlow, JAX or PyTorch."""

from siamese_k3 import backbones, distances, losses
from siamese_k3.losses import (
    TripletBatchAllLoss,
    TripletHardLoss,
    TripletLoss,
    TripletSemiHardLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
    triplet_loss,
)
from siamese_k3.models import SiameseModel

__version__ = "0.1.0"
