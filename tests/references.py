"""Independent references the tests compare against: plain float64 Python and numpy, no siamese_k3."""

import math

import numpy as np


def reference_distance(x, y, distance):
    """The distance of two vectors by its textbook formula (euclidean, squared_euclidean, cosine)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if distance == "cosine":
        return 1.0 - float(x @ y) / (math.sqrt(x @ x) * math.sqrt(y @ y))
    squared = float(((x - y) ** 2).sum())
    return squared if distance == "squared_euclidean" else math.sqrt(squared)
