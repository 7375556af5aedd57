"""Splitting a labelled dataset: train/test splits, few-shot subsets, and client partitions.

Every function is pure and deterministic in ``seed``; each partition returns one sorted index
array per client. Two streams are drawn from the seed so that the *proportions* a partition
assigns depend only on (seed, number of classes, number of clients): applying the same partition
with the same seed to the train and the test split gives every client matching class
distributions, which is what personalised evaluation needs.

Registered partitions (``partition.name`` in a config): ``even_per_class`` (Fed-RSIC),
``dirichlet``, ``iid``, ``centralized`` (one client holding everything), ``feature_clusters``
(FedMPT: k-means of zero-shot image features, one cluster per client), ``pathological`` (k
classes per client), ``shard`` (McMahan et al.'s label-sorted shards), ``domain`` (one domain
per client), ``quantity`` (Dirichlet client sizes, the quantity skew of NIID-Bench) and ``flwr``
(any Flower Datasets partitioner by name, the ``flwr`` extra).

A partition is called with the split's labels, the seed and, when the dataset has them, image
features and each image's domain (``domains``, ``[N]`` ids; see ``LabelledImages.domains``).
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import Field

from fedvlm.sections import ComponentConfig
from fedvlm.errors import ConfigError
from fedvlm.registry import Registry

PARTITIONS: Registry = Registry("partition")


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def _class_members(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices of every class (classes in label order), each shuffled by ``rng``."""
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(int(labels.max()) + 1)] if labels.size else []


def split(labels: Sequence[int], fractions: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
    """Stratified split: every class is cut by ``fractions`` (e.g. 50/50, 20/80, 70/15/15).

    Per class, part sizes are ``floor(fraction * n_c)`` with the leftover images given to the
    parts with the largest fractional remainders (earlier parts win ties), so 60 images at 50/50
    give 30/30 and 700 at 20/80 give 140/560, exactly the Fed-RSIC protocol.
    """
    labels = np.asarray(labels)
    fractions = np.asarray(fractions, dtype=float)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for members in _class_members(labels, _rng(seed, 0)):
        exact = fractions * len(members)
        sizes = np.floor(exact).astype(int)
        leftover = len(members) - sizes.sum()
        order = np.argsort(-(exact - sizes), kind="stable")
        sizes[order[:leftover]] += 1
        for part, chunk in zip(parts, np.split(members, np.cumsum(sizes)[:-1])):
            part.append(chunk)
    return tuple(np.sort(np.concatenate(p)) if p else np.array([], dtype=int) for p in parts)


def random_split(count: int, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
    """Unstratified split of ``count`` rows by ``fractions`` (multi-label data has no single
    class to stratify by)."""
    order = _rng(seed, 0).permutation(count)
    sizes = np.floor(np.asarray(fractions) * count).astype(int)
    sizes[0] += count - sizes.sum()
    return tuple(np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1]))


def hide_labels(labels: np.ndarray, rows: np.ndarray, fraction: float, seed: int) -> np.ndarray | None:
    """Training labels with ``fraction`` of the entries of ``rows`` set to -1 (unknown): the
    part-annotation benchmark (FedMPT Sec. 5, Mask%). Unknown is not negative: the losses skip
    it. None when nothing is hidden. Multi-label ``[N, C]`` labels only."""
    if not fraction:
        return None
    hidden = labels.copy()
    mask = _rng(seed, 2).random((len(rows), labels.shape[1])) < fraction
    block = hidden[rows]
    block[mask] = -1
    hidden[rows] = block
    return hidden


def few_shot(labels: Sequence[int], shots: int, seed: int, classnames: Sequence[str] | None = None) -> np.ndarray:
    """``shots`` random images of every class. A class with fewer is an error naming it (by
    ``classnames[c]`` when given, else its label id) and its count: taking all it has would make
    an "N-shot" result that is not N-shot, with nothing on screen to say so."""
    labels = np.asarray(labels)
    members = _class_members(labels, _rng(seed, 0))
    counts = [len(m) for m in members]
    short = [c for c, n in enumerate(counts) if n < shots]
    if short:
        c = min(short, key=lambda k: (counts[k], k))
        name = repr(classnames[c]) if classnames is not None else f"with label {c}"
        raise ConfigError(f"data.shots: {shots} training images per class requested, but class {name} has only "
                          f"{counts[c]} in the training split ({len(short)} of {len(counts)} classes have fewer "
                          f"than {shots}); expected data.shots <= {min(counts)} or a larger training split")
    chosen = [m[:shots] for m in members]
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)


def even_per_class(labels: Sequence[int], num_clients: int, seed: int) -> list[np.ndarray]:
    """Fed-RSIC dealing (FedRSCLIP Sec. III-B, Table I).

    Each class's images are dealt to the clients as evenly as possible: ``n_c // K`` each, and
    the ``n_c % K`` leftovers go to the next clients in a rotation that continues from class to
    class. Every class's per-client counts then differ by at most one, and so do the clients'
    totals (e.g. NWPU 20% train, 6,300 images, 40 clients: 157 or 158 each).
    """
    labels = np.asarray(labels)
    shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    next_client = 0  # where the leftover rotation continues
    for members in _class_members(labels, _rng(seed, 1)):
        base, leftover = divmod(len(members), num_clients)
        counts = np.full(num_clients, base)
        counts[(next_client + np.arange(leftover)) % num_clients] += 1
        next_client = (next_client + leftover) % num_clients
        for client, chunk in enumerate(np.split(members, np.cumsum(counts)[:-1])):
            shares[client].append(chunk)
    return [np.sort(np.concatenate(s)) if s else np.array([], dtype=int) for s in shares]


def dirichlet_proportions(num_classes: int, num_clients: int, alpha: float, seed: int) -> np.ndarray:
    """``[C, K]``: every class's share per client, one Dirichlet(alpha * 1_K) draw per class."""
    return _rng(seed, 0).dirichlet(np.full(num_clients, float(alpha)), size=num_classes)


def dirichlet(labels: Sequence[int], num_clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Per-class Dirichlet partition (the label-skew protocol of OTDPP, FedOTP, FedPGP).

    Class c's shuffled images are cut at the cumulative proportions ``p_c ~ Dir(alpha)``; small
    alpha concentrates each class on few clients. A client may receive no image of a class, or
    none at all at very small alpha and few images (it then trains on nothing and has weight 0
    in FedAvg). The proportions depend on (seed, C, K, alpha) only, so the same call on the
    test split gives every client the class mix it trains on.
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if labels.size else 0
    proportions = dirichlet_proportions(num_classes, num_clients, alpha, seed)
    shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, members in enumerate(_class_members(labels, _rng(seed, 1))):
        cuts = np.floor(np.cumsum(proportions[c])[:-1] * len(members) + 1e-9).astype(int)
        for client, chunk in enumerate(np.split(members, cuts)):
            shares[client].append(chunk)
    return [np.sort(np.concatenate(s)) if s else np.array([], dtype=int) for s in shares]


def iid(labels: Sequence[int], num_clients: int, seed: int) -> list[np.ndarray]:
    """Uniformly random shares of (almost) equal size, ignoring labels."""
    order = _rng(seed, 1).permutation(len(labels))
    return [np.sort(chunk) for chunk in np.array_split(order, num_clients)]


def _num_classes(labels: np.ndarray) -> int:
    return int(labels.max()) + 1 if labels.size else 0


def _deal_evenly(members: np.ndarray, holders: Sequence[int], shares: list[list[np.ndarray]]) -> None:
    """``members`` cut into ``len(holders)`` near-equal consecutive chunks, chunk j to ``holders[j]``."""
    for client, chunk in zip(holders, np.array_split(members, len(holders))):
        shares[client].append(chunk)


def _joined(shares: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.sort(np.concatenate(s)).astype(np.int64) if s else np.array([], dtype=np.int64) for s in shares]


def pathological_classes(num_classes: int, num_clients: int, classes_per_client: int, seed: int) -> list[np.ndarray]:
    """The classes of every client: client i holds ``order[(i k + j) mod C]`` for j < k, ``order``
    a seeded permutation of the C classes. The k classes of a client are distinct (k <= C) and
    every class is held by floor or ceil of K k / C clients (all classes are used when K k >= C)."""
    order = _rng(seed, 0).permutation(num_classes)
    return [np.sort(order[(client * classes_per_client + np.arange(classes_per_client)) % num_classes])
            for client in range(num_clients)]


def pathological(labels: Sequence[int], num_clients: int, classes_per_client: int, seed: int) -> list[np.ndarray]:
    """The pathological non-IID partition (McMahan et al. 2017, Sec. 3; the "k classes per
    client" setting of PromptFL and FedOTP): every client holds exactly ``classes_per_client``
    classes; a class's images are split evenly among the clients holding it. The classes each
    client holds depend on (seed, C, K, k) only, so the test split gives every client its own
    classes in the same even shares."""
    labels = np.asarray(labels)
    num_classes = _num_classes(labels)
    if classes_per_client > num_classes:
        raise ConfigError(f"partition.classes_per_client: {classes_per_client} classes per client, but the split has "
                          f"only {num_classes} classes; expected at most {num_classes}")
    held = pathological_classes(num_classes, num_clients, classes_per_client, seed)
    holders = [[client for client in range(num_clients) if c in held[client]] for c in range(num_classes)]
    shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, members in enumerate(_class_members(labels, _rng(seed, 1))):
        if holders[c] and len(members) < len(holders[c]):
            raise ConfigError(f"partition.classes_per_client: class {c} has {len(members)} images in the split but "
                              f"is held by {len(holders[c])} clients, so some would not hold {classes_per_client} "
                              "classes; expected fewer clients or classes per client, or more images per class")
        if holders[c]:
            _deal_evenly(members, holders[c], shares)
    return _joined(shares)


def shard(labels: Sequence[int], num_clients: int, shards_per_client: int, seed: int) -> list[np.ndarray]:
    """McMahan et al.'s shards (2017, Sec. 3: "sort the data by digit label, divide it into 200
    shards of size 300, and assign each of 100 clients 2 shards"): the split sorted by label
    (seeded order within a class) is cut into ``K * s`` near-equal consecutive shards, and a
    seeded permutation deals ``s`` shards to every client. Shard j covers the same quantiles of
    the label-sorted order in any split, so with the stratified train/test split (same class
    proportions) a client's test shards hold the classes of its training shards."""
    labels = np.asarray(labels)
    count = num_clients * shards_per_client
    if count > len(labels):
        raise ConfigError(f"partition.shards_per_client: {num_clients} clients x {shards_per_client} shards = {count} "
                          f"shards, but the split has only {len(labels)} images; expected at most one shard per image")
    order = np.concatenate(_class_members(labels, _rng(seed, 1))) if labels.size else np.array([], dtype=int)
    shards = np.array_split(order, count)
    dealt = _rng(seed, 0).permutation(count).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[j] for j in dealt[client]])).astype(np.int64)
            for client in range(num_clients)]


def domain_partition(labels: Sequence[int], domains: Sequence[int], num_clients: int, seed: int) -> list[np.ndarray]:
    """One domain per client (FedBN's and FedOTP's feature-shift setting: DomainNet,
    Office-Caltech10): with D domains and K = m D clients, clients d m .. d m + m - 1 hold domain
    d, its images dealt evenly per class among them (``even_per_class`` within the domain). Client
    k's domain is ``k // m`` in every split, so it is tested on the domain it trains on."""
    labels, domains = np.asarray(labels), np.asarray(domains)
    num_domains = int(domains.max()) + 1 if domains.size else 0
    if num_domains == 0 or num_clients % num_domains:
        raise ConfigError(f"partition.num_clients: {num_clients} clients for {num_domains} domains; expected a "
                          f"multiple of {max(num_domains, 1)} (one domain per client, m clients per domain)")
    per_domain = num_clients // num_domains
    shares: list[np.ndarray] = []
    for d in range(num_domains):
        rows = np.flatnonzero(domains == d)
        shares += [rows[part] for part in even_per_class(labels[rows], per_domain, seed + d)] if rows.size else \
            [np.array([], dtype=np.int64)] * per_domain
    return [np.sort(share).astype(np.int64) for share in shares]


def quantity_proportions(num_clients: int, beta: float, seed: int) -> np.ndarray:
    """``[K]`` client sizes as fractions of the split, ``q ~ Dir(beta * 1_K)``."""
    return _rng(seed, 0).dirichlet(np.full(num_clients, float(beta)))


def quantity(labels: Sequence[int], num_clients: int, beta: float, seed: int) -> list[np.ndarray]:
    """Quantity skew (NIID-Bench, Li et al. 2022, Sec. IV-C): client sizes ``q ~ Dir(beta)``, labels
    as in the whole split. Every class is cut at the cumulative ``q`` (largest remainders), so
    client k holds ``q_k n_c`` images of class c up to rounding: its size follows the skew, its
    class mix is the split's, and the test split is cut by the same ``q``. Small beta leaves some
    clients with few or no images (they then have weight 0 in FedAvg)."""
    labels = np.asarray(labels)
    proportions = quantity_proportions(num_clients, beta, seed)
    shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for members in _class_members(labels, _rng(seed, 1)):
        exact = proportions * len(members)
        sizes = np.floor(exact).astype(int)
        sizes[np.argsort(-(exact - sizes), kind="stable")[: len(members) - sizes.sum()]] += 1
        for client, chunk in enumerate(np.split(members, np.cumsum(sizes)[:-1])):
            shares[client].append(chunk)
    return _joined(shares)


# --------------------------------------------------------------------------- registry entries


class PartitionConfig(ComponentConfig):
    """``partition:`` section. Calling it partitions a label array."""

    num_clients: int = Field(10, gt=0)
    needs_features: ClassVar[bool] = False  # True: partitions image features, not labels
    needs_domains: ClassVar[bool] = False  # True: partitions by each image's domain
    # True: shares out multi-hot label rows [N, C] too; the others read one class id per image
    multi_hot: ClassVar[bool] = False

    def __call__(self, labels: Sequence[int], seed: int, features=None, domains=None) -> list[np.ndarray]:
        raise NotImplementedError

    def split_test(self, labels: Sequence[int], seed: int, features=None, train_features=None,
                   domains=None) -> list[np.ndarray]:
        """Client shares of the test split (every client is also evaluated on its own share).
        Default: the same partition with the same seed, which gives each client the class
        proportions it trains on. ``train_features`` are the features the train split was
        partitioned with (partitions of image features assign test images to its clusters)."""
        return self(labels, seed, features=features, domains=domains)

    def clients(self) -> int:
        return self.num_clients

    def check(self, num_samples: int) -> None:
        if self.clients() > num_samples:
            raise ConfigError(
                f"partition.num_clients: {self.num_clients} clients but only {num_samples} training "
                "images; expected at most one client per image"
            )


@PARTITIONS.register("even_per_class")
class EvenPerClass(PartitionConfig):
    def __call__(self, labels, seed, features=None, domains=None):
        return even_per_class(labels, self.num_clients, seed)


@PARTITIONS.register("dirichlet")
class Dirichlet(PartitionConfig):
    alpha: float = Field(0.5, gt=0)

    def __call__(self, labels, seed, features=None, domains=None):
        return dirichlet(labels, self.num_clients, self.alpha, seed)


@PARTITIONS.register("iid")
class IID(PartitionConfig):
    multi_hot: ClassVar[bool] = True

    def __call__(self, labels, seed, features=None, domains=None):
        return iid(labels, self.num_clients, seed)


@PARTITIONS.register("centralized")
class Centralized(PartitionConfig):
    """One client holding all the data: the papers' "Centralized" column (trained with FedAvg, the
    mean over one client being that client; ``algorithm: centralized`` is an alias, fedvlm.config)."""

    multi_hot: ClassVar[bool] = True

    num_clients: int = Field(1, ge=1, le=1)
    # a renamed section (partition.name=centralized) does not carry num_clients over: it is fixed at 1
    fixed_keys: ClassVar[tuple[str, ...]] = ("num_clients",)

    def __call__(self, labels, seed, features=None, domains=None):
        return [np.arange(len(labels))]


@PARTITIONS.register("pathological")
class Pathological(PartitionConfig):
    """``partition: {name: pathological, num_clients: K, classes_per_client: k}``."""

    classes_per_client: int = Field(2, gt=0)  # McMahan et al.: two digits per client

    def __call__(self, labels, seed, features=None, domains=None):
        return pathological(labels, self.num_clients, self.classes_per_client, seed)


@PARTITIONS.register("shard")
class Shard(PartitionConfig):
    """``partition: {name: shard, num_clients: K, shards_per_client: s}``."""

    shards_per_client: int = Field(2, gt=0)  # McMahan et al.: 200 shards, 2 per client

    def __call__(self, labels, seed, features=None, domains=None):
        return shard(labels, self.num_clients, self.shards_per_client, seed)


@PARTITIONS.register("domain")
class Domain(PartitionConfig):
    """``partition: {name: domain, num_clients: K}``: one domain per client (K a multiple of the
    number of domains); needs a dataset with domains (domainnet, office_caltech10,
    synthetic_domains)."""

    needs_domains: ClassVar[bool] = True

    def __call__(self, labels, seed, features=None, domains=None):
        if domains is None:
            raise ConfigError("partition.name: domain gives every client one domain, but the dataset has no domains; "
                              "expected a multi-domain data.dataset (domainnet, office_caltech10, synthetic_domains)")
        return domain_partition(labels, domains, self.num_clients, seed)


@PARTITIONS.register("quantity")
class Quantity(PartitionConfig):
    """``partition: {name: quantity, num_clients: K, beta: 0.5}``: Dirichlet(beta) client sizes."""

    beta: float = Field(0.5, gt=0)  # NIID-Bench's default

    def __call__(self, labels, seed, features=None, domains=None):
        return quantity(labels, self.num_clients, self.beta, seed)


# ------------------------------------------------------------------ FedMPT heterogeneity partition


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): ``[k, D]`` initial centroids drawn from
    ``points [N, D]``, each with probability proportional to its squared distance to the nearest
    centroid chosen so far."""
    centroids = [points[rng.integers(len(points))]]
    nearest = ((points - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = nearest.sum()
        index = int(rng.choice(len(points), p=nearest / total)) if total > 0 else int(rng.integers(len(points)))
        centroids.append(points[index])
        nearest = np.minimum(nearest, ((points - points[index]) ** 2).sum(1))
    return np.stack(centroids)


def _squared_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``[N, k]`` squared Euclidean distances (one matrix product)."""
    return np.maximum((points ** 2).sum(1)[:, None] - 2 * points @ centroids.T + (centroids ** 2).sum(1)[None], 0)


def kmeans(points: np.ndarray, k: int, seed: int, init: np.ndarray | None = None, max_iter: int = 300,
           tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means: ``points [N, D]`` -> (cluster of every point ``[N]``, centroids ``[k, D]``).

    Starts from ``init`` or k-means++ seeding drawn from ``seed``; stops when no point changes
    cluster or the centroids move less than ``tol`` (squared, summed), or after ``max_iter``
    rounds. A cluster left empty takes the point farthest from its centroid (as scikit-learn
    does), so every cluster ends with at least one point when N >= k. Deterministic in ``seed``.
    """
    points = np.asarray(points, dtype=np.float64)
    if not 1 <= k <= len(points):
        raise ValueError(f"k-means needs 1 <= k <= {len(points)} points, got k={k}")
    centroids = np.array(init, dtype=np.float64) if init is not None else kmeans_plus_plus(points, k, _rng(seed, 3))
    assignment = np.full(len(points), -1)
    for _ in range(max_iter):
        distances = _squared_distances(points, centroids)
        new_assignment = distances.argmin(1)
        changed = not np.array_equal(new_assignment, assignment)
        assignment = new_assignment
        moved = centroids.copy()
        for cluster in range(k):
            members = assignment == cluster
            if members.any():
                moved[cluster] = points[members].mean(0)
            else:  # re-seed an empty cluster with the worst-fitted point
                worst = int(distances[np.arange(len(points)), assignment].argmax())
                moved[cluster] = points[worst]
                assignment[worst] = cluster
                distances[worst] = 0
        shift = ((moved - centroids) ** 2).sum()
        centroids = moved
        if not changed or shift <= tol:
            break
    return _squared_distances(points, centroids).argmin(1), centroids


def _unit_rows(features) -> np.ndarray:
    features = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


# The last clustering, by (features digest, num_clients, seed): a run partitions the train split
# and then assigns the test split to the same clusters; k-means on COCO-sized splits takes minutes.
_LAST_CLUSTERING: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def feature_clusters(features, num_clients: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """FedMPT's heterogeneity partition (Sec. 3.1, Sec. 5 "Heterogeneity Benchmark"): k-means of
    the zero-shot CLIP image features into ``num_clients`` clusters, one cluster per client.

    features: ``[N, D]`` pooled image embeddings, L2-normalised here (CLIP compares them by
    cosine). The paper sets the number of clusters to S = t% x C (t in {10, 20, 40, 60, 80,
    100}); see :func:`clients_for_class_fraction`. Returns (the clients' sorted row indices, the
    ``[num_clients, D]`` centroids on the unit-normalised features). The last result is kept, so
    the same call again (the test split's assignment) does not repeat the k-means.
    """
    points = _unit_rows(features)
    key = (points.shape, hashlib.blake2b(points.tobytes(), digest_size=16).digest(), int(num_clients), int(seed))
    if key not in _LAST_CLUSTERING:
        _LAST_CLUSTERING.clear()
        _LAST_CLUSTERING[key] = kmeans(points, num_clients, seed)
    assignment, centroids = _LAST_CLUSTERING[key]
    return [np.flatnonzero(assignment == k) for k in range(num_clients)], centroids.copy()


def clients_for_class_fraction(fraction: float, num_classes: int) -> int:
    """S = t% x C clusters (clients), rounded, at least one: VOC2007 (C = 20) at t = 10..100% gives
    2, 4, 8, 12, 16, 20; COCO2014 (C = 80) 8, 16, 32, 48, 64, 80."""
    return max(1, int(np.floor(fraction * num_classes + 0.5)))


@PARTITIONS.register("feature_clusters")
class FeatureClusters(PartitionConfig):
    """``partition: {name: feature_clusters, num_clients: S}``: one k-means cluster of the split's
    zero-shot image features per client. Test images go to the client whose train-split
    centroid is nearest, so personalised evaluation sees the client's own kind of image."""

    multi_hot: ClassVar[bool] = True

    needs_features: ClassVar[bool] = True

    def __call__(self, labels, seed, features=None, domains=None):
        if features is None:
            raise ConfigError("partition.name: feature_clusters clusters image features, but none were given")
        return feature_clusters(features, self.num_clients, seed)[0]

    def split_test(self, labels, seed, features=None, train_features=None, domains=None):
        if features is None or train_features is None:
            raise ConfigError("partition.name: feature_clusters needs the train and test image features")
        _, centroids = feature_clusters(train_features, self.num_clients, seed)
        nearest = _squared_distances(_unit_rows(features), centroids).argmin(1)
        return [np.flatnonzero(nearest == k) for k in range(self.num_clients)]


def client_class_counts(labels: np.ndarray, shares: list[np.ndarray], num_classes: int) -> np.ndarray:
    """``[K, C]`` table of how many images of each class every client holds (for multi-hot
    labels ``[N, C]``: how many images contain each class)."""
    labels = np.asarray(labels)
    table = np.zeros((len(shares), num_classes), dtype=np.int64)
    for client, indices in enumerate(shares):
        if labels.ndim == 2:
            table[client] = (labels[indices] == 1).sum(0)
        else:
            table[client] = np.bincount(labels[indices], minlength=num_classes)
    return table


# ------------------------------------------------------------ Flower Datasets partitioners (optional)


def flwr_partition(labels: Sequence[int], num_clients: int, partitioner: str, kwargs: dict, seed: int) -> list[np.ndarray]:
    """Client shares drawn by ``flwr_datasets.partitioner.<partitioner>(**kwargs)`` (the ``flwr``
    extra) over the class ids ``labels`` ``[N]``: fedvlm sets ``num_partitions`` (the clients),
    ``partition_by`` (the label column) and, unless ``kwargs`` gives it, ``seed`` (the run's), where
    the partitioner takes them. One sorted index array per client, as every partition returns."""
    try:
        from flwr_datasets import partitioner as partitioners
    except ImportError:
        raise ConfigError("partition.name: flwr needs the Flower Datasets package; pip install 'fedvlm[flwr]' "
                          "(flwr-datasets)") from None
    import inspect

    from fedvlm.data.hub import label_table

    known = sorted(name for name, value in vars(partitioners).items()
                   if isinstance(value, type) and issubclass(value, partitioners.Partitioner)
                   and value is not partitioners.Partitioner)
    if partitioner not in known:
        raise ConfigError(f"partition.partitioner: unknown flwr_datasets partitioner {partitioner!r}; expected one "
                          f"of: {', '.join(known)}")
    kind = getattr(partitioners, partitioner)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError("partition.name: flwr partitions by class id, and this dataset's labels are multi-hot; "
                          "choose iid or feature_clusters")
    accepted = inspect.signature(kind).parameters
    fixed = {"num_partitions": num_clients, "partition_by": "label"}
    given = sorted(set(kwargs) & set(fixed))
    if given:
        raise ConfigError(f"partition.kwargs: {', '.join(given)} is set by fedvlm (partition.num_clients, the labels); "
                          "remove it")
    arguments = {**{k: v for k, v in fixed.items() if k in accepted},
                 **({"seed": seed} if "seed" in accepted and "seed" not in kwargs else {}), **kwargs}
    try:
        chosen = kind(**arguments)
        chosen.dataset = label_table(labels)
        shares = [np.sort(np.asarray(chosen.load_partition(k)["row"], dtype=np.int64)) for k in range(num_clients)]
    except (TypeError, ValueError, KeyError) as error:  # a wrong argument, or a split it cannot draw
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"partition.kwargs: {partitioner}({', '.join(f'{k}={v!r}' for k, v in arguments.items())}) "
                          f"failed: {reason}") from None
    return shares


@PARTITIONS.register("flwr")
class Flwr(PartitionConfig):
    """Any Flower Datasets partitioner by name, e.g. ``{name: flwr, partitioner: DirichletPartitioner,
    kwargs: {alpha: 0.5, min_partition_size: 0}}`` (:func:`flwr_partition`). The test split is cut
    by the same partitioner with the same seed: the class mixes match where the partitioner's
    proportions depend on the seed alone (DirichletPartitioner with ``min_partition_size: 0``,
    which never redraws), otherwise only approximately."""

    partitioner: str = "DirichletPartitioner"
    kwargs: dict[str, Any] = {}

    def __call__(self, labels, seed, features=None, domains=None):
        return flwr_partition(labels, self.num_clients, self.partitioner, self.kwargs, seed)
