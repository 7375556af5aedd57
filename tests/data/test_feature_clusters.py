"""FedMPT's heterogeneity partition: k-means against scikit-learn, and the properties the
benchmark relies on (one cluster per client, every image once, deterministic in the seed, test
images with their nearest train cluster)."""

import numpy as np
import pytest
from sklearn.cluster import KMeans

from fedvlm.config import load_config
from fedvlm.data.partition import (PARTITIONS, clients_for_class_fraction, feature_clusters, kmeans,
                                   kmeans_plus_plus)


def _blobs(seed, per_blob=30, blobs=5, dim=8, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(blobs, dim)) * 3
    return np.concatenate([c + spread * rng.normal(size=(per_blob, dim)) for c in centres])


@pytest.mark.parametrize("seed, k", [(0, 3), (1, 5), (2, 8)])
def test_kmeans_matches_scikit_learn_from_the_same_start(seed, k):
    points = _blobs(seed)
    init = kmeans_plus_plus(points, k, np.random.default_rng(seed))
    ours, centroids = kmeans(points, k, seed, init=init)
    reference = KMeans(n_clusters=k, init=init, n_init=1, algorithm="lloyd", tol=0, max_iter=300).fit(points)
    np.testing.assert_array_equal(ours, reference.labels_)
    np.testing.assert_allclose(centroids, reference.cluster_centers_, atol=1e-8)


def test_kmeans_fixed_point_and_empty_clusters():
    points = _blobs(4, per_blob=20, blobs=4)
    assignment, centroids = kmeans(points, 6, seed=3)
    distances = ((points[:, None] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(assignment, distances.argmin(1))  # every point at its nearest centroid
    for k in range(6):
        np.testing.assert_allclose(centroids[k], points[assignment == k].mean(0))  # centroids are means
    # A start with two identical centroids leaves one empty: it is re-seeded, none stays empty.
    init = np.stack([points[0], points[0], points[30], points[60]])
    assignment, _ = kmeans(points, 4, seed=0, init=init)
    assert np.bincount(assignment, minlength=4).min() > 0


def test_feature_clusters_partition_every_image_once_deterministically():
    features = _blobs(5, per_blob=25, blobs=6, dim=16)
    shares, centroids = feature_clusters(features, 6, seed=1)
    everything = np.concatenate(shares)
    assert len(everything) == len(features) and len(np.unique(everything)) == len(features)
    assert all(len(s) > 0 for s in shares) and centroids.shape == (6, 16)
    again, _ = feature_clusters(features, 6, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(shares, again))
    # well-separated blobs (by direction: features are compared by cosine) are recovered exactly
    blob = np.repeat(np.arange(6), 25)
    assert all(len(np.unique(blob[s])) == 1 for s in shares)
    # scaling a feature does not move it: the clustering is on unit-normalised features
    scaled, _ = feature_clusters(features * np.linspace(0.5, 2, len(features))[:, None], 6, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(shares, scaled))


def test_registered_partition_and_test_assignment():
    config = load_config(overrides=["name=x", "data.dataset=voc2007", "partition.name=feature_clusters",
                                    "partition.num_clients=4"]).partition
    assert type(config) is PARTITIONS.get("feature_clusters") and config.needs_features
    train, test = _blobs(6, per_blob=20, blobs=4), _blobs(6, per_blob=5, blobs=4)
    labels = np.zeros((len(train), 3))
    shares = config(labels, seed=2, features=train)
    test_shares = config.split_test(np.zeros((len(test), 3)), seed=2, features=test, train_features=train)
    _, centroids = feature_clusters(train, 4, seed=2)
    unit = test / np.linalg.norm(test, axis=1, keepdims=True)
    nearest = ((unit[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    for k in range(4):
        np.testing.assert_array_equal(test_shares[k], np.flatnonzero(nearest == k))
        # the test images of client k come from the same blob as its training images
        assert set(np.concatenate([shares[k] // 20])) == set(test_shares[k] // 5)
    with pytest.raises(Exception, match="clusters image features"):
        config(labels, seed=2)


def test_clients_for_class_fraction_gives_the_papers_client_counts():
    fractions = [0.1, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert [clients_for_class_fraction(t, 20) for t in fractions] == [2, 4, 8, 12, 16, 20]  # VOC2007
    assert [clients_for_class_fraction(t, 80) for t in fractions] == [8, 16, 32, 48, 64, 80]  # COCO2014
    assert [clients_for_class_fraction(t, 81) for t in fractions] == [8, 16, 32, 49, 65, 81]  # NUS-WIDE
    assert clients_for_class_fraction(0.6, 36) == 22 and clients_for_class_fraction(0.6, 60) == 36


def test_test_assignment_reuses_the_train_clustering(monkeypatch):
    """A run clusters the train split, then assigns the test split to those clusters: the k-means
    (minutes on COCO-sized splits) runs once, and a different split or seed is clustered anew."""
    from fedvlm.data import partition

    calls = []
    original = partition.kmeans
    monkeypatch.setattr(partition, "kmeans", lambda *args, **kw: calls.append(1) or original(*args, **kw))
    config = load_config(overrides=["name=x", "data.dataset=voc2007", "partition.name=feature_clusters",
                                    "partition.num_clients=3"]).partition
    train, test = _blobs(7, per_blob=15, blobs=3), _blobs(7, per_blob=4, blobs=3)
    shares = config(np.zeros((len(train), 2)), seed=0, features=train)
    config.split_test(np.zeros((len(test), 2)), seed=0, features=test, train_features=train)
    assert len(calls) == 1
    again = config(np.zeros((len(train), 2)), seed=1, features=train)
    assert len(calls) == 2 and sum(len(s) for s in again) == sum(len(s) for s in shares) == len(train)
