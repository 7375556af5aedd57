"""The label-, shard-, domain- and quantity-skew partitions: each one's defining property checked by
brute force, plus coverage, disjointness, determinism, the test split following the training mix,
and one-line errors for settings that cannot be met."""

import numpy as np
import pytest

from fedvlm.config import load_config
from fedvlm.data.partition import (PARTITIONS, client_class_counts, domain_partition, pathological, quantity,
                                   quantity_proportions, shard, split)
from fedvlm.errors import ConfigError


def _partition(*overrides):
    """The ``partition:`` section as a YAML run would build it."""
    return load_config(overrides=["name=x", "data.dataset=synthetic_domains", *overrides]).partition


def _labels(num_classes=10, per_class=40, seed=0):
    """Unequal class sizes in shuffled order, so nothing holds by accident of a tidy array."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(per_class + 3 * c, c) for c in range(num_classes)])
    return labels[rng.permutation(len(labels))]


def _assert_disjoint_cover(shares, count):
    joined = np.concatenate(shares)
    assert len(joined) == len(np.unique(joined)) == count  # every row once
    assert all(np.array_equal(s, np.sort(s)) for s in shares)


def _class_mix(labels, shares, num_classes):
    counts = client_class_counts(labels, shares, num_classes).astype(float)
    return counts / np.maximum(counts.sum(1, keepdims=True), 1)


@pytest.mark.parametrize("clients,k", [(10, 2), (7, 3), (4, 10), (25, 1)])
def test_pathological_gives_every_client_exactly_k_classes(clients, k):
    labels = _labels()
    shares = pathological(labels, clients, k, seed=3)
    _assert_disjoint_cover(shares, len(labels))  # K k >= C here: every class is held
    for share in shares:
        assert len(np.unique(labels[share])) == k
    # a class's images are shared evenly by its holders (sizes differ by at most one)
    table = client_class_counts(labels, shares, 10)
    for c in range(10):
        held = table[:, c][table[:, c] > 0]
        assert held.max() - held.min() <= 1


def test_pathological_test_split_gives_each_client_its_own_classes_in_the_same_shares():
    labels = _labels(per_class=60)
    train, test = split(labels, (0.5, 0.5), seed=1)
    config = _partition("partition.name=pathological", "partition.num_clients=8",
                        "partition.classes_per_client=3")
    train_shares, test_shares = config(labels[train], 5), config.split_test(labels[test], 5)
    for a, b in zip(train_shares, test_shares):
        assert set(labels[train][a]) == set(labels[test][b])
    assert np.abs(_class_mix(labels[train], train_shares, 10) - _class_mix(labels[test], test_shares, 10)).max() < 0.05


def test_pathological_refuses_k_above_the_classes_and_too_few_images():
    with pytest.raises(ConfigError, match="classes_per_client: 11 classes per client, but the split has only 10") as e:
        pathological(_labels(), 4, 11, seed=0)
    assert "\n" not in str(e.value)
    tiny = np.repeat(np.arange(4), 2)  # 2 images per class, 8 clients x 2 classes: 4 holders per class
    with pytest.raises(ConfigError, match="class 0 has 2 images in the split but is held by 4 clients"):
        pathological(tiny, 8, 2, seed=0)


def _blocks_matching(counts, blocks, per_client, free):
    """All ways to pick ``per_client`` unused blocks whose class counts sum to ``counts``."""
    from itertools import combinations

    return [combo for combo in combinations(sorted(free), per_client)
            if np.array_equal(sum(blocks[j] for j in combo), counts)]


@pytest.mark.parametrize("clients,per_client", [(6, 3), (5, 2), (9, 1)])
def test_shards_are_contiguous_blocks_of_the_label_sorted_split(clients, per_client):
    """Brute force: cut the sorted labels into K*s consecutive near-equal blocks; the clients'
    class counts must be an exact cover of those blocks, s blocks per client."""
    labels = _labels()
    shares = shard(labels, clients, per_client, seed=2)
    _assert_disjoint_cover(shares, len(labels))
    sorted_labels = np.sort(labels)
    blocks = [np.bincount(sorted_labels[b], minlength=10)
              for b in np.array_split(np.arange(len(labels)), clients * per_client)]
    counts = [np.bincount(labels[s], minlength=10) for s in shares]

    def cover(client, free):
        if client == len(counts):
            return not free
        return any(cover(client + 1, free - set(combo))
                   for combo in _blocks_matching(counts[client], blocks, per_client, free))

    assert cover(0, set(range(len(blocks))))


def test_shards_follow_the_sorted_order_exactly():
    """Sorted labels, 10 shards of 6: every client's labels are the union of two of the blocks."""
    labels = np.repeat(np.arange(5), 12)
    shares = shard(labels, 5, 2, seed=4)
    blocks = [sorted(labels[b]) for b in np.array_split(np.arange(60), 10)]
    for share in shares:
        assert len(share) == 12
        assert any(sorted(a + b) == sorted(labels[share]) for a in blocks for b in blocks)


def test_shard_test_split_holds_the_classes_of_the_training_shards():
    labels = _labels(per_class=80)
    train, test = split(labels, (0.5, 0.5), seed=0)
    a, b = shard(labels[train], 5, 2, seed=9), shard(labels[test], 5, 2, seed=9)
    assert np.abs(_class_mix(labels[train], a, 10) - _class_mix(labels[test], b, 10)).max() < 0.1


def test_shard_refuses_more_shards_than_images():
    with pytest.raises(ConfigError, match="10 clients x 2 shards = 20 shards, but the split has only 12 images"):
        shard(np.arange(12) % 3, 10, 2, seed=0)


def test_domain_clients_hold_one_domain_each_and_tests_stay_on_it():
    labels = _labels(num_classes=6, per_class=30)
    domains = np.random.default_rng(1).integers(0, 3, len(labels))
    train, test = split(labels, (0.6, 0.4), seed=0)
    config = _partition("partition.name=domain", "partition.num_clients=6")
    train_shares = config(labels[train], 0, domains=domains[train])
    test_shares = config.split_test(labels[test], 0, domains=domains[test])
    _assert_disjoint_cover(train_shares, len(train))
    for k, (a, b) in enumerate(zip(train_shares, test_shares)):
        assert set(domains[train][a]) == set(domains[test][b]) == {k // 2}
    # the two clients of a domain split its images evenly per class
    table = client_class_counts(labels[train], train_shares, 6)
    assert np.abs(table[0::2] - table[1::2]).max() <= 1


def test_domain_partition_needs_domains_and_a_multiple_of_them():
    config = _partition("partition.name=domain", "partition.num_clients=4")
    with pytest.raises(ConfigError, match="the dataset has no domains; expected a multi-domain data.dataset"):
        config(np.zeros(10, int), 0)
    with pytest.raises(ConfigError, match="4 clients for 3 domains; expected a multiple of 3"):
        domain_partition(np.zeros(9, int), np.arange(9) % 3, 4, 0)


def test_quantity_sizes_follow_the_dirichlet_draw_and_keep_the_class_mix():
    labels = _labels(per_class=200)
    clients = 8
    shares = quantity(labels, clients, beta=0.5, seed=6)
    _assert_disjoint_cover(shares, len(labels))
    q = quantity_proportions(clients, 0.5, 6)
    sizes = np.array([len(s) for s in shares])
    assert np.all(np.abs(sizes - q * len(labels)) <= 10)  # per-class rounding: at most one image per class
    assert sizes.max() > 3 * np.median(sizes) or sizes.min() < 0.3 * np.median(sizes)  # skewed at beta 0.5
    mix = _class_mix(labels, [s for s in shares if len(s) > 200], 10)
    assert np.abs(mix - np.bincount(labels) / len(labels)).max() < 0.03


def test_quantity_skew_grows_as_beta_shrinks_and_test_split_is_cut_the_same():
    labels = _labels(per_class=100)
    spread = [np.std([len(s) for s in quantity(labels, 10, beta, 0)]) for beta in (100.0, 1.0, 0.1)]
    assert spread[0] < spread[1] < spread[2]
    train, test = split(labels, (0.5, 0.5), seed=0)
    a = np.array([len(s) for s in quantity(labels[train], 10, 1.0, 3)])
    b = np.array([len(s) for s in quantity(labels[test], 10, 1.0, 3)])
    assert np.abs(a / a.sum() - b / b.sum()).max() < 0.02


@pytest.mark.parametrize("name,extra", [("pathological", ["partition.classes_per_client=3"]),
                                        ("shard", ["partition.shards_per_client=3"]),
                                        ("quantity", ["partition.beta=0.3"]), ("domain", [])])
def test_new_partitions_are_registered_configurable_and_deterministic(name, extra):
    assert name in PARTITIONS.names()
    config = _partition(f"partition.name={name}", "partition.num_clients=6", *extra)
    labels = _labels()
    domains = np.arange(len(labels)) % 3
    first, again = config(labels, 11, domains=domains), config(labels, 11, domains=domains)
    other = config(labels, 12, domains=domains)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
