"""What every implementation shares: the workload and the training hyperparameters (no framework imports)."""

import dataclasses

MODELS = ("mlp", "cnn", "resnet50")
LOSSES = ("triplet", "semi_hard")

MARGIN = 1.0
LEARNING_RATE = 1e-3  # keras.optimizers.Adam defaults, used by every native loop
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7
NUM_CLASSES = 10  # labels of the semi_hard batches
SEED = 0


@dataclasses.dataclass(frozen=True)
class Workload:
    model: str
    loss: str
    batch_size: int  # triplets (triplet) or labelled images (semi_hard) per step
    steps: int  # steps per timed epoch
    repeats: int  # timed epochs per implementation (interleaved)
    image_size: int = 0  # resnet50 only: H = W of its input (0: the backbone's default)
