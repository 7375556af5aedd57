"""``runtime.feature_table``: where the cached feature table is indexed. On this CPU-only machine
the accelerator path is checked with torch's ``meta`` device (a real device type without storage):
the table and the row indices go there, the batch is a gather there, and the present slots are
still computed on the host."""

import numpy as np
import torch

from fedvlm.config import load_config
from fedvlm.inputs.features import FeatureBatches, table_device


def _table(rows=12, width=8, patches=5):
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(rows, width, generator=generator), torch.randn(rows, patches, width, generator=generator),
            torch.arange(rows) % 3)


def test_the_placement_rule():
    pooled, patches, _ = _table()
    for placement in ("auto", "host", "device"):
        assert table_device(placement, [pooled, patches], "cpu") == torch.device("cpu")  # one memory
    assert table_device("host", [pooled], "meta") == torch.device("cpu")
    assert table_device("device", [pooled], "meta") == torch.device("meta")
    assert table_device("auto", [pooled], "meta") == torch.device("cpu")  # no free memory to read: host


def test_a_device_table_is_copied_once_and_batches_gather_there():
    pooled, patches, labels = _table()
    source = FeatureBatches(pooled, patches, labels, "meta", placement="device")
    assert {t.device.type for t in (source.pooled, source.patches, source.labels, source.train_labels)} == {"meta"}
    rows, slot = np.array([3, 0, 7, 7]), np.array([1, 1, 0, 2])
    batch = source.batch(rows, slot)
    assert batch.image.device.type == "meta" and batch.patches.shape == (4, 5, 8)
    # the present slots were computed from the host's slot ids before the move
    assert batch.present.device.type == "meta" and tuple(batch.present_ids) == (0, 1, 2)


def test_host_and_device_placement_give_the_same_batches_on_a_cpu():
    pooled, patches, labels = _table()
    rows, slot = np.array([5, 2, 11]), np.array([0, 1, 1])
    host = FeatureBatches(pooled, patches, labels, "cpu", placement="host").batch(rows, slot)
    device = FeatureBatches(pooled, patches, labels, "cpu", placement="device").batch(rows, slot)
    assert torch.equal(host.image, device.image) and torch.equal(host.patches, device.patches)
    assert torch.equal(host.image, pooled[rows])


def test_the_key_is_a_runtime_setting():
    config = load_config("experiments/demo.yaml", ["runtime.feature_table=device"])
    assert config.runtime.feature_table == "device"
    assert load_config("experiments/demo.yaml").runtime.feature_table == "auto"
