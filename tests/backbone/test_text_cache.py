"""Caption features: token outputs consistent with encode_text, computed once, cached on disk."""

import warnings

import numpy as np
import torch

from fedvlm.backbone import text_cache
from fedvlm.backbone.cache import CacheWarning
from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.backbone.text_cache import caption_features

CAPTIONS = ["two cars parked in rows.", "a harbor with many ships. a pier on the left.", "trees"]


def test_token_outputs_at_eot_are_encode_text(tiny_backbone):
    ids = tiny_backbone.tokenize(CAPTIONS)
    tokens, eot = tiny_backbone.encode_text_tokens(ids)
    assert tokens.shape[1] == int(eot.max()) + 1
    torch.testing.assert_close(tokens[torch.arange(3), eot], tiny_backbone.encode_text(CAPTIONS), atol=1e-5, rtol=1e-5)


def test_features_are_cached_in_memory_and_on_disk(tiny_backbone, tmp_path, monkeypatch):
    first = caption_features(tiny_backbone, CAPTIONS, tokens=True, mode="disk", cache_dir=tmp_path)
    torch.testing.assert_close(first.pooled, tiny_backbone.encode_text(CAPTIONS), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first.tokens[torch.arange(3), first.eot].float(), first.pooled, atol=2e-2, rtol=1e-2)
    assert caption_features(tiny_backbone, CAPTIONS, tokens=True, mode="disk", cache_dir=tmp_path) is first
    text_cache.clear_memory_cache()
    monkeypatch.setattr(text_cache, "encode_captions", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    again = caption_features(tiny_backbone, CAPTIONS, tokens=True, mode="disk", cache_dir=tmp_path)  # from disk
    torch.testing.assert_close(again.pooled, first.pooled)
    assert torch.equal(again.token_ids, first.token_ids)
    text_cache.clear_memory_cache()


def test_pooled_features_are_encode_text_for_a_tower_that_cannot_be_trimmed():
    # Without the causal mask every position reads the padding, so captions must not be cut at
    # their longest EOT before encoding (encode_text runs the full context). A backbone of its
    # own: the shared fixture must keep its mask.
    backbone = FrozenCLIP.load("fedvlm-tiny", None)
    backbone.text_tower.attn_mask = None
    backbone.can_trim_text = False
    table = text_cache.encode_captions(backbone, CAPTIONS, tokens=True)
    torch.testing.assert_close(table.pooled, backbone.encode_text(CAPTIONS), atol=1e-5, rtol=1e-5)
    assert table.tokens.shape[1] == table.token_ids.shape[1] == int(table.eot.max()) + 1


def test_altered_caption_tokens_are_rebuilt_with_one_warning(tiny_backbone, tmp_path):
    text_cache.clear_memory_cache()
    fresh = text_cache.encode_captions(tiny_backbone, CAPTIONS, tokens=True)
    caption_features(tiny_backbone, CAPTIONS, tokens=True, mode="disk", cache_dir=tmp_path)
    (folder,) = (tmp_path / "captions").iterdir()
    tokens = np.load(folder / "tokens.npy", mmap_mode="r+")
    tokens[1, 2, 3] += 1.0  # same shape, one other value
    tokens.flush()
    del tokens
    text_cache.clear_memory_cache()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = caption_features(tiny_backbone, CAPTIONS, tokens=True, mode="disk", cache_dir=tmp_path)

    assert [issubclass(w.category, CacheWarning) and str(folder) in str(w.message) for w in caught] == [True]
    assert torch.equal(rebuilt.tokens, fresh.tokens) and torch.equal(rebuilt.pooled, fresh.pooled)
    text_cache.clear_memory_cache()
