"""Image-text retrieval pieces shared by the retrieval heads (docs/RETRIEVAL.md).

``layers``: the maths of RDB's adapters as pure functions over per-sample (slot-gathered) weights:
differential attention (RDB Eq. 2-3), GRU / BiGRU and attention pooling (Eq. 4-9).
``losses``: the Dual-Task Consistency Loss terms (Eq. 10, 12-14).
The batch source that adds each image's captions to image batches is :mod:`fedvlm.inputs.captions`
(``batches`` re-exports it for one release).
"""
