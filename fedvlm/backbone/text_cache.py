"""Caption features computed once: the text encoder is frozen, so a caption's features never change.

:func:`caption_features` returns, for a list of captions, the pooled text feature ``[T, D]``
(``encode_text``) and, when a head reads words (RDB's Text Semantic Adapter), every token's
projected output ``[T, L, D]`` with the token ids and EOT positions that say which rows are words.
Retrieval runs encode their captions here before the first round; no round re-encodes a caption.

Like the image cache (:mod:`fedvlm.backbone.cache`), the result is kept in memory for the process
and, with ``mode="disk"``, under ``<cache_dir>/captions/<key>/`` (written to a temporary folder
and renamed when complete; its arrays are checksummed and verified on load, a damaged entry is
rebuilt with one warning). The key hashes the model identity, the caption texts and whether
token features are included. Token features are stored in float16 (RSICD's 54,605 captions at
ViT-B width are about 2 GB that way); the pooled features stay float32.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from fedvlm.backbone.cache import default_cache_dir, read_arrays, write_arrays
from fedvlm.backbone.clip import FrozenCLIP


@dataclass
class CaptionFeatures:
    pooled: torch.Tensor  # [T, D] float32, what encode_text returns
    token_ids: torch.Tensor  # [T, L] int64, cut after the longest EOT
    eot: torch.Tensor  # [T] int64, position of each caption's EOT token
    tokens: torch.Tensor | None = None  # [T, L, D] float16 projected token outputs (None: not asked for)

    def __len__(self) -> int:
        return len(self.pooled)


_MEMORY: dict[str, CaptionFeatures] = {}


def caption_key(backbone: FrozenCLIP, captions: list[str], tokens: bool) -> str:
    digest = hashlib.sha256(f"{backbone.identity()}|tokens={tokens}|v2".encode())
    for caption in captions:
        digest.update(caption.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:24]


@torch.no_grad()
def encode_captions(backbone: FrozenCLIP, captions: list[str], tokens: bool, batch_size: int = 256) -> CaptionFeatures:
    """Run the frozen text tower over ``captions`` in batches."""
    ids = backbone.tokenize(captions) if captions else torch.zeros(0, backbone.context_length, dtype=torch.long)
    eot = backbone.eot_positions(ids)
    length = int(eot.max()) + 1 if len(ids) else 1
    pooled, token_rows = [], []
    for start in range(0, len(ids), batch_size):
        # Full-length ids: encode_text_tokens trims them itself where trimming cannot change the
        # result (a causal tower); a tower without the causal mask reads the padding too.
        outputs, batch_eot = backbone.encode_text_tokens(ids[start : start + batch_size])
        outputs, batch_eot = outputs.cpu(), batch_eot.cpu()
        pooled.append(outputs[torch.arange(len(outputs)), batch_eot])
        if tokens:
            outputs = outputs[:, :length]
            padded = torch.zeros(len(outputs), length, outputs.shape[-1], dtype=torch.float16)
            padded[:, : outputs.shape[1]] = outputs.half()
            token_rows.append(padded)
    ids = ids[:, :length]
    dim = backbone.embed_dim
    return CaptionFeatures(
        pooled=torch.cat(pooled) if pooled else torch.zeros(0, dim),
        token_ids=ids.long(), eot=eot.long(),
        tokens=(torch.cat(token_rows) if token_rows else torch.zeros(0, length, dim, dtype=torch.float16))
        if tokens else None)


def caption_features(backbone: FrozenCLIP, captions: list[str], tokens: bool = False, mode: str = "memory",
                     cache_dir: str | Path | None = None, batch_size: int = 256, rank: int = 0,
                     barrier=None) -> CaptionFeatures:
    """Cached features of ``captions`` (see the module docstring). With ``mode="disk"`` only rank 0
    encodes and writes; the other ranks wait at ``barrier`` and read. In memory mode every rank
    encodes for itself (the text tower over the captions once: seconds for RSICD on a GPU)."""
    key = caption_key(backbone, captions, tokens)
    if key in _MEMORY:
        return _MEMORY[key]
    folder = default_cache_dir(str(cache_dir) if cache_dir else None) / "captions" / key
    table = _read(folder, tokens) if mode == "disk" else None
    if table is None:
        if mode == "disk" and rank != 0:
            if barrier is not None:
                barrier()
            table = _read(folder, tokens)
        else:
            table = encode_captions(backbone, captions, tokens, batch_size)
            if mode == "disk":
                _write(folder, table, backbone, len(captions))
                if barrier is not None:
                    barrier()
    _MEMORY[key] = table
    return table


_ARRAYS = ("pooled", "token_ids", "eot", "tokens")


def _read(folder: Path, tokens: bool) -> CaptionFeatures | None:
    arrays = read_arrays(folder, [name for name in _ARRAYS if name != "tokens" or tokens])
    return None if arrays is None else CaptionFeatures(**arrays)


def _write(folder: Path, table: CaptionFeatures, backbone: FrozenCLIP, count: int) -> None:
    write_arrays(folder, {name: getattr(table, name) for name in _ARRAYS},
                 {"model": backbone.name, "pretrained": backbone.pretrained, "captions": count})


def clear_memory_cache() -> None:
    _MEMORY.clear()
