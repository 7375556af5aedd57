import json
import os
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fedvlm.backbone import cache
from fedvlm.data.folders import scan_image_folder
from fedvlm.errors import DataError
from conftest import write_colour_folder


@pytest.fixture()
def paths(tmp_path):
    files, _, _ = scan_image_folder(write_colour_folder(tmp_path / "images", per_class=5))
    return files


def _count_encoder_calls(backbone, monkeypatch):
    calls = []
    original = backbone.encode_images
    monkeypatch.setattr(backbone, "encode_images", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_features_equal_a_direct_encoder_pass(tiny_backbone, paths):
    table = cache.extract(tiny_backbone, paths, patches=True, batch_size=4)
    pixels = torch.stack([tiny_backbone.preprocess(Image.open(p).convert("RGB")) for p in paths])
    direct = tiny_backbone.encode_images(pixels, patches=True)
    torch.testing.assert_close(table.pooled, direct.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(table.patches, direct.patches, atol=1e-5, rtol=1e-5)


def test_memory_then_disk_cache_never_recompute(tiny_backbone, paths, tmp_path, monkeypatch):
    cache.clear_memory_cache()
    calls = _count_encoder_calls(tiny_backbone, monkeypatch)
    first = cache.image_features(tiny_backbone, paths, patches=False, mode="disk", cache_dir=tmp_path / "c")
    encoded = len(calls)
    assert encoded > 0
    again = cache.image_features(tiny_backbone, paths, patches=False, mode="disk", cache_dir=tmp_path / "c")
    assert again is first and len(calls) == encoded  # memory hit
    cache.clear_memory_cache()  # a new process: the disk entry is read, the encoder is not run
    from_disk = cache.image_features(tiny_backbone, paths, patches=False, mode="disk", cache_dir=tmp_path / "c")
    assert len(calls) == encoded
    assert torch.equal(from_disk.pooled, first.pooled)
    assert not list((tmp_path / "c" / "features").glob("*.tmp-*"))  # no half-written entry left


def test_key_changes_with_files_patches_and_weights(tiny_backbone, paths):
    base = cache.cache_key(tiny_backbone, paths, patches=False)
    assert cache.cache_key(tiny_backbone, paths[:-1], patches=False) != base
    assert cache.cache_key(tiny_backbone, paths, patches=True) != base
    stat = os.stat(paths[0])
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was rewritten
    assert cache.cache_key(tiny_backbone, paths, patches=False) != base


def test_corrupt_image_is_reported_by_path(tiny_backbone, paths):
    paths[3].write_bytes(b"not a png at all")
    with pytest.raises(DataError) as error:
        cache.extract(tiny_backbone, paths, patches=False, batch_size=4)
    assert str(paths[3]) in str(error.value) and "\n" not in str(error.value)


def test_two_process_extraction_equals_one(tiny_backbone, paths):
    """Batches are dealt to ranks in fixed units; summing the ranks' tables gives the same table."""
    whole = cache.extract(tiny_backbone, paths, patches=True, batch_size=4)
    halves = [cache.extract(tiny_backbone, paths, patches=True, batch_size=4, rank=r, world_size=2,
                            all_reduce=lambda t: t) for r in (0, 1)]
    assert torch.equal(halves[0].pooled + halves[1].pooled, whole.pooled)
    assert torch.equal(halves[0].patches + halves[1].patches, whole.patches)
    assert np.count_nonzero(halves[0].pooled.abs().sum(1)) == 8  # rank 0 computed batches 0 and 2


def test_augmented_views_are_fixed_distinct_and_cached(tiny_backbone, paths, tmp_path):
    cache.clear_memory_cache()
    first = cache.extract(tiny_backbone, paths[:6], patches=True, batch_size=4, views=2)
    again = cache.extract(tiny_backbone, paths[:6], patches=True, batch_size=4, views=2)
    assert first.view_pooled.shape == (2, 6, tiny_backbone.embed_dim) and first.view_patches.shape[:2] == (2, 6)
    assert torch.equal(first.view_pooled, again.view_pooled)  # view v of an image is always the same crop
    assert not torch.allclose(first.view_pooled[0], first.view_pooled[1])
    assert not torch.allclose(first.view_pooled[0], first.pooled)
    assert cache.cache_key(tiny_backbone, paths, False, views=2) != cache.cache_key(tiny_backbone, paths, False)
    stored = cache.image_features(tiny_backbone, paths[:6], patches=False, mode="disk", cache_dir=tmp_path, views=2)
    cache.clear_memory_cache()
    loaded = cache.image_features(tiny_backbone, paths[:6], patches=False, mode="disk", cache_dir=tmp_path, views=2)
    assert torch.equal(loaded.view_pooled, stored.view_pooled) and loaded.num_views == 2


def _damage(folder, how):
    """Damage a disk cache entry the ways a disk, a copy or a user can."""
    if how == "altered":  # one value changed, same shape and dtype
        array = np.load(folder / "patches.npy", mmap_mode="r+")
        array[3, 1, 2] += 1.0
        array.flush()
        del array
    elif how == "truncated":
        path = folder / "patches.npy"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "meta_deleted":
        (folder / "meta.json").unlink()
    elif how == "checksum_deleted":
        meta = json.loads((folder / "meta.json").read_text())
        del meta["arrays"]["pooled"]["crc32"]
        (folder / "meta.json").write_text(json.dumps(meta))
    elif how == "pickled_array":  # an object array would need pickle (code) to load
        np.save(folder / "pooled.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    elif how == "meta_not_json":
        (folder / "meta.json").write_bytes(b"\xff\xfe not json")


@pytest.mark.parametrize("how", ["altered", "truncated", "meta_deleted", "checksum_deleted", "pickled_array",
                                 "meta_not_json"])
def test_damaged_disk_entry_is_rebuilt_with_one_warning(tiny_backbone, paths, tmp_path, how):
    cache.clear_memory_cache()
    fresh = cache.extract(tiny_backbone, paths, patches=True)  # the batch size image_features uses
    cache.image_features(tiny_backbone, paths, patches=True, mode="disk", cache_dir=tmp_path)
    (folder,) = (tmp_path / "features").iterdir()
    _damage(folder, how)
    cache.clear_memory_cache()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = cache.image_features(tiny_backbone, paths, patches=True, mode="disk", cache_dir=tmp_path)

    messages = [str(w.message) for w in caught if issubclass(w.category, cache.CacheWarning)]
    assert len(messages) == 1 and "\n" not in messages[0] and str(folder) in messages[0], messages
    assert torch.equal(rebuilt.pooled, fresh.pooled) and torch.equal(rebuilt.patches, fresh.patches)
    cache.clear_memory_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten entry verifies: no second warning
        again = cache.image_features(tiny_backbone, paths, patches=True, mode="disk", cache_dir=tmp_path)
    assert torch.equal(again.patches, fresh.patches)
    cache.clear_memory_cache()


def test_checksum_is_recorded_and_a_missing_entry_is_a_silent_miss(tiny_backbone, paths, tmp_path):
    cache.clear_memory_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # first build: no warning
        table = cache.image_features(tiny_backbone, paths, patches=False, mode="disk", cache_dir=tmp_path)
    (folder,) = (tmp_path / "features").iterdir()
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format"] == cache.CACHE_FORMAT
    assert meta["arrays"]["pooled"] == {"dtype": "float32", "shape": list(table.pooled.shape),
                                        "crc32": f"{zlib.crc32(table.pooled.numpy().tobytes()):08x}"}
    cache.clear_memory_cache()
