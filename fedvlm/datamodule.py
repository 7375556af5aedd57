"""``FeatureDataModule``: an experiment's data for ``lightning.Trainer``, in fedvlm's own batch order.

The Trainer path is the papers' "Centralized" column: one model trained on every training row.
The module builds what a run builds (:func:`fedvlm.simulation.build_federation`: dataset, split,
feature cache, batch source), so the Trainer sees exactly the rows, features and labels the
federated loop sees. Trainer epoch r is fedvlm round r: its batches are
``batch_schedule(rows, batch_size, local_epochs, local_steps, client_generator(seed, r, 0))``,
the order the federated loop gives ``algorithm: centralized``'s one client in round r (augmented
views drawn from the same stream), so with ``devices=1`` and the same seed ``Trainer.fit`` ends
where ``fedvlm.simulation.run`` does (tests/client/test_module.py). On several devices Lightning
shares each epoch's batches out over the processes: ordinary data parallelism, not bit-identical
to one device.

The training rows are client 0's for a centralized config (every training row, in split order),
else every client's rows one client after another.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from fedvlm.client.training import batch_schedule, client_generator, local_step_count


class RoundBatches(Sampler):
    """The batches ``(rows, views)`` of one Trainer epoch (= one fedvlm round) of one client;
    ``set_epoch`` (called by Lightning's fit loop) chooses the round."""

    def __init__(self, rows: np.ndarray, batch_size: int, epochs: int, steps: int | None, seed: int,
                 num_views: int, client: int = 0):
        self.rows, self.batch_size, self.epochs, self.steps = rows, batch_size, epochs, steps
        self.seed, self.num_views, self.client, self.epoch = seed, num_views, client, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return local_step_count(len(self.rows), self.batch_size, self.epochs, self.steps)

    def __iter__(self):
        schedule = batch_schedule(self.rows, self.batch_size, self.epochs, self.steps,
                                  client_generator(self.seed, self.epoch, self.client))
        views = client_generator(self.seed, self.epoch, self.client, stream=1)
        for rows in schedule:
            yield rows, (views.integers(self.num_views, size=len(rows)) if self.num_views else None)


class _TrainBatches(torch.utils.data.Dataset):
    """``dataset[(rows, views)]``: the training batch of those rows, every sample in slot 0."""

    def __init__(self, source):
        self.source = source

    def __getitem__(self, index):
        rows, views = index
        return self.source.batch(rows, np.zeros(len(rows), dtype=np.int64), views=views)


class _TestBatches(torch.utils.data.Dataset):
    """``dataset[(positions, rows)]``: (positions of the rows in the test split, their batch)."""

    def __init__(self, source):
        self.source = source

    def __getitem__(self, index):
        positions, rows = index
        return torch.from_numpy(positions), self.source.batch(rows, np.zeros(len(rows), dtype=np.int64), train=False)


class FeatureDataModule(L.LightningDataModule):
    """The data of ``config`` for ``Trainer.fit(HeadModule(...), FeatureDataModule(config))``."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.federation = None

    def prepare_data(self) -> None:
        """Encode the images once (Lightning calls this on one process per node): with
        ``runtime.feature_cache: disk`` the other processes' ``setup`` reads the cache it fills."""
        self._build()

    def setup(self, stage: str | None = None) -> None:
        self._build()

    def _build(self) -> None:
        if self.federation is not None:
            return
        from lightning.fabric import Fabric

        from fedvlm.simulation import build_federation  # the composition root builds the run's inputs

        # build_federation's collectives are those of one process: this process's share of the
        # inputs, on the CPU (the Trainer moves each batch to the module's device)
        self.federation = build_federation(self.config, Fabric(accelerator="cpu", devices=1))

    # ------------------------------------------------------------------ what a module needs

    @property
    def classnames(self) -> list[str]:
        return self.federation.classnames

    @property
    def template(self) -> str:
        return self.federation.head.template

    @property
    def backbone(self):
        return self.federation.backbone

    @property
    def train_rows(self) -> np.ndarray:
        return np.concatenate(self.federation.train) if len(self.federation.train) > 1 else self.federation.train[0]

    @property
    def test_rows(self) -> np.ndarray:
        return self.federation.test_rows

    def batch(self, rows: np.ndarray, train: bool = False):
        """A batch of feature-table ``rows`` in slot 0 (evaluation labels unless ``train``)."""
        rows = np.asarray(rows)
        return self.federation.data.batch(rows, np.zeros(len(rows), dtype=np.int64), train=train)

    # -------------------------------------------------------------------------- loaders

    def train_dataloader(self) -> DataLoader:
        config = self.config
        sampler = RoundBatches(self.train_rows, config.optim.batch_size, config.federation.local_epochs,
                               config.federation.local_steps, config.seed,
                               getattr(self.federation.data, "num_views", 0))
        return DataLoader(_TrainBatches(self.federation.data), batch_size=None, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        rows, size = self.test_rows, self.config.eval.batch_size
        batches = [(np.arange(start, min(start + size, len(rows))), rows[start : start + size])
                   for start in range(0, len(rows), size)]
        return DataLoader(_TestBatches(self.federation.data), batch_size=None, sampler=batches)
