"""siamese_k3.runs.evaluation: the collapse check and the console table."""

import numpy as np
import pytest

from siamese_k3.runs.evaluation import collapse_metrics, table

pytestmark = pytest.mark.backend_independent  # numpy, files and checks: one backend runs it (tests/README.md)


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, (200, 8, 8)).astype(np.uint8)


def test_one_point_for_every_image_is_collapsed(images):
    result = collapse_metrics(np.ones((200, 4), np.float32), images)
    assert result["distinct_fraction"] == 0.0 and result["distance_spread"] == 0.0
    assert result["collapsed"] is True
    assert result["raw_pixels"]["distinct_fraction"] == 1.0  # 64 random bytes per image never repeat


def test_well_spread_embeddings_are_not_collapsed(images, rng):
    embeddings = rng.normal(size=(200, 4)).astype(np.float32)
    result = collapse_metrics(embeddings, images)
    assert result["distinct_fraction"] == 1.0 and result["collapsed"] is False


def test_the_spread_is_the_coefficient_of_variation_of_pair_distances(images):
    """Half the rows at 0, half at (3, 4): every pair distance is 0 or 5."""
    embeddings = np.zeros((200, 2))
    embeddings[100:] = (3.0, 4.0)
    result = collapse_metrics(embeddings, images, pairs=20000)
    # distances are 5 with probability ~1/2 (pairs of distinct rows): mean 2.5, std 2.5, ratio 1
    assert result["distance_spread"] == pytest.approx(1.0, abs=0.03)
    assert result["distinct_fraction"] == 0.0 and result["collapsed"] is True


def test_non_finite_embeddings_are_collapsed(images, rng):
    embeddings = rng.normal(size=(200, 4))
    embeddings[3, 1] = np.nan
    assert collapse_metrics(embeddings, images)["collapsed"] is True


def test_the_table_flags_a_collapsed_run():
    metrics = {
        "best_accuracy": 0.5, "roc_auc": 0.5, "mean_cosine_similarity_anchor_positive": 1.0,
        "mean_cosine_similarity_anchor_negative": 1.0,
        "collapse": {"distinct_fraction": 0.0, "distance_spread": 0.0, "collapsed": True,
                     "raw_pixels": {"distinct_fraction": 1.0, "distance_spread": 0.2}},
    }
    lines = table(metrics)
    assert any(line.startswith("distinct embeddings") for line in lines)
    assert lines[-1].startswith("COLLAPSED")
