"""Recompute a Fashion-MNIST run's retrieval metrics without siamese_k3: plain keras + numpy.

    python -m benchmarks.check_run runs/fashion_mnist [--data-dir /usr/share/datasets/fashion-mnist]

Loads RUN/embedding.keras with `keras.models.load_model` in a process where
``import siamese_k3`` fails, embeds the 10 000 test images (read from the
original IDX files), and computes precision@1, R-precision and MAP@R by a full
argsort per query (ties by index), independently of `siamese_k3.search`.
Prints them next to RUN/metrics.json's values.
"""

import argparse
import gzip
import json
import os
import sys

sys.modules["siamese_k3"] = None  # prove that the artifact needs nothing of ours

import keras  # noqa: E402
import numpy as np  # noqa: E402


def read_idx(path):
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def retrieval(embeddings, labels, chunk=500):
    """Leave-one-out P@1, R-precision, MAP@R with squared euclidean ranking, by full sorts."""
    embeddings = embeddings.astype(np.float64)
    squared = (embeddings ** 2).sum(1)
    counts = np.bincount(labels)
    totals = np.zeros(3)
    for start in range(0, len(labels), chunk):
        rows = np.arange(start, min(start + chunk, len(labels)))
        distances = squared[rows, None] - 2 * embeddings[rows] @ embeddings.T + squared[None, :]
        distances[np.arange(len(rows)), rows] = np.inf  # the query itself goes last
        order = np.argsort(distances, axis=1, kind="stable")[:, :-1]
        relevant = labels[order] == labels[rows, None]
        r = counts[labels[rows]] - 1
        for i in range(len(rows)):
            hits = relevant[i, : r[i]]
            precision_at = np.cumsum(hits) / np.arange(1, r[i] + 1)
            totals += (hits[0], hits.mean(), (precision_at * hits).sum() / r[i])
    return dict(zip(("precision_at_1", "r_precision", "map_at_r"), totals / len(labels)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args()
    images = read_idx(os.path.join(args.data_dir, "t10k-images-idx3-ubyte.gz")).astype("float32")
    labels = read_idx(os.path.join(args.data_dir, "t10k-labels-idx1-ubyte.gz")).astype(np.int64)
    model = keras.models.load_model(os.path.join(args.run, "embedding.keras"))
    embeddings = np.asarray(model.predict(images, batch_size=512, verbose=0))
    recomputed = retrieval(embeddings, labels)
    with open(os.path.join(args.run, "metrics.json")) as handle:
        recorded = json.load(handle)
    print(f"{'metric':<16}{'recomputed':>12}{'metrics.json':>14}   ({keras.backend.backend()}, no siamese_k3)")
    for key, value in recomputed.items():
        print(f"{key:<16}{value:>12.4f}{recorded[key]:>14.4f}")


if __name__ == "__main__":
    main()
