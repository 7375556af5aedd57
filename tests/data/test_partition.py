import numpy as np
import pytest

from fedvlm.data.partition import (client_class_counts, dirichlet, dirichlet_proportions, even_per_class,
                                   few_shot, iid, split)
from fedvlm.errors import ConfigError


def _labels(classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class)


def _is_partition(shares, n):
    everything = np.concatenate(shares)
    return len(everything) == n and len(np.unique(everything)) == n


# FedRSCLIP Table I: train images per client (test is equal for 50/50; NWPU test is 4x).
FED_RSIC = {
    "optimal": (31, 60, 0.5, {2: 465, 5: 186, 10: 93, 15: 62, 20: 46, 40: 23}),
    "ucmerced": (21, 100, 0.5, {2: 525, 5: 210, 10: 105, 15: 70, 20: 52, 40: 26}),
    "nwpu": (45, 700, 0.2, {2: 3150, 5: 1260, 10: 630, 15: 420, 20: 315, 40: 158}),
}


@pytest.mark.parametrize("dataset", sorted(FED_RSIC))
@pytest.mark.parametrize("clients", [2, 5, 10, 15, 20, 40])
def test_fed_rsic_totals_match_table_one(dataset, clients):
    classes, per_class, train_fraction, table = FED_RSIC[dataset]
    labels = _labels(classes, per_class)
    train, test = split(labels, [train_fraction, 1 - train_fraction], seed=0)
    assert len(train) == round(classes * per_class * train_fraction)
    shares = even_per_class(labels[train], clients, seed=0)
    sizes = np.array([len(s) for s in shares])
    assert _is_partition(shares, len(train))
    assert sizes.max() - sizes.min() <= 1
    # Table I prints one number: the floor or the rounded mean of near-equal shares.
    assert table[clients] in (sizes.min(), sizes.max())
    counts = client_class_counts(labels[train], shares, classes)
    assert (counts.max(0) - counts.min(0)).max() <= 1  # every class spread within one image
    test_sizes = np.array([len(s) for s in even_per_class(labels[test], clients, seed=0)])
    assert test_sizes.max() - test_sizes.min() <= 1


def test_nwpu_forty_clients_gets_157_or_158_train_and_630_test():
    labels = _labels(45, 700)
    train, test = split(labels, [0.2, 0.8], seed=1)
    train_sizes = {len(s) for s in even_per_class(labels[train], 40, seed=1)}
    test_sizes = {len(s) for s in even_per_class(labels[test], 40, seed=1)}
    assert train_sizes == {157, 158}
    assert test_sizes == {630}


def test_split_is_stratified_and_exact():
    labels = _labels(4, 40)
    train, val, test = split(labels, [0.7, 0.15, 0.15], seed=3)
    for part, expected in ((train, 28), (val, 6), (test, 6)):
        assert (np.bincount(labels[part], minlength=4) == expected).all()
    assert _is_partition([train, val, test], len(labels))


def test_partitions_are_deterministic_in_seed():
    labels = np.random.default_rng(0).integers(0, 7, 500)
    for make in (lambda s: even_per_class(labels, 6, s), lambda s: dirichlet(labels, 6, 0.3, s),
                 lambda s: iid(labels, 6, s)):
        a, b, c = make(5), make(5), make(6)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_dirichlet_covers_everything_and_skews_with_small_alpha():
    labels = _labels(10, 200)
    for alpha in (0.1, 1.0, 100.0):
        assert _is_partition(dirichlet(labels, 8, alpha, seed=0), len(labels))

    def skew(alpha):  # mean over clients of the largest class share
        counts = client_class_counts(labels, dirichlet(labels, 8, alpha, seed=0), 10).astype(float)
        fractions = counts / counts.sum(1, keepdims=True).clip(min=1)
        return fractions.max(1).mean()

    assert skew(0.1) > skew(1.0) > skew(100.0)
    assert skew(100.0) < 0.2  # nearly uniform over 10 classes


def test_dirichlet_proportions_match_the_dirichlet_mean():
    proportions = dirichlet_proportions(2000, 5, alpha=0.5, seed=0)
    assert np.allclose(proportions.sum(1), 1)
    assert np.allclose(proportions.mean(0), 0.2, atol=0.02)  # E[p_k] = 1/K
    # Var[p_k] = (1/K)(1 - 1/K) / (K alpha + 1)
    assert np.allclose(proportions.var(0), 0.2 * 0.8 / (5 * 0.5 + 1), rtol=0.15)


def test_dirichlet_on_train_and_test_gives_matching_class_mix():
    labels = _labels(6, 300)
    train, test = split(labels, [0.5, 0.5], seed=2)
    train_counts = client_class_counts(labels[train], dirichlet(labels[train], 4, 0.5, seed=9), 6)
    test_counts = client_class_counts(labels[test], dirichlet(labels[test], 4, 0.5, seed=9), 6)
    assert np.abs(train_counts - test_counts).max() <= 1


def test_few_shot_takes_shots_per_class():
    labels = _labels(5, 30)
    chosen = few_shot(labels, 8, seed=0)
    assert (np.bincount(labels[chosen]) == 8).all()
    assert len(np.unique(chosen)) == 40
    small = np.array([0, 0, 1, 1, 1, 1])
    assert (np.bincount(small[few_shot(small, 2, seed=0)]) == [2, 2]).all()


def test_few_shot_refuses_a_class_with_fewer_images_naming_it_and_its_count():
    small = np.array([0, 0, 1, 1, 1, 1])
    with pytest.raises(ConfigError, match=r"class 'cat' has only 2 in the training split.*data.shots <= 2"):
        few_shot(small, 3, seed=0, classnames=["cat", "dog"])
    with pytest.raises(ConfigError, match="class with label 0 has only 2"):
        few_shot(small, 3, seed=0)


def test_a_class_id_partition_on_a_multilabel_dataset_is_one_line():
    """dirichlet, even_per_class, pathological, shard, quantity and domain read one class id per
    image; on multi-hot rows they are refused when the config loads (it used to be an IndexError
    deep in the run), naming the partitions that do share out multi-hot rows."""
    import pytest

    from fedvlm.config import load_config
    from fedvlm.errors import ConfigError

    for name in ("dirichlet", "even_per_class", "pathological", "shard", "quantity"):
        with pytest.raises(ConfigError) as error:
            load_config("experiments/synthetic/multilabel.yaml", [f"partition.name={name}", "seeds=[1]"])
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"partition.name: {name} shares out one class id")
        assert "centralized, feature_clusters, iid" in message
    assert load_config("experiments/synthetic/multilabel.yaml", ["partition.name=iid", "seeds=[1]"])
