"""What every implementation shares: the workload and the training hyperparameters (no framework imports)."""

import dataclasses

MODELS = ("mlp", "cnn", "compact", "resnet50")  # compact: the main job's compact_cnn, uint8 P×K batches
LOSSES = ("triplet", "semi_hard", "batch_all")

MARGIN = 1.0
MARGIN_BATCH_ALL = 0.2  # the main job's
LEARNING_RATE = 1e-3  # keras.optimizers.Adam defaults, used by every native loop
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7
NUM_CLASSES = 10  # labels of the mining batches
CLASSES_PER_BATCH = 8  # P of the compact model's P×K batches (the main job's)
SEED = 0


@dataclasses.dataclass(frozen=True)
class Workload:
    model: str
    loss: str
    batch_size: int  # triplets (triplet) or labelled images (semi_hard) per step
    steps: int  # steps per timed epoch
    repeats: int  # timed epochs per implementation (interleaved)
    image_size: int = 0  # resnet50 only: H = W of its input (0: the backbone's default)


def margin(loss):
    """The margin every implementation trains `loss` with: the main job's 0.2 for batch-all, else 1."""
    return MARGIN_BATCH_ALL if loss == "batch_all" else MARGIN
