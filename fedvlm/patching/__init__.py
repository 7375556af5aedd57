"""Patching CLIP and aligning a second modality to it ("Mind the Modality Gap", papers/
modality_gap_paint.txt; docs/PATCHING.md).

``classifier``: the frozen prompt-ensembled text head both stages classify through (Algorithm 1,
cls_head). ``interpolation``: PAINT's weight interpolation and the choice of alpha.
``losses``: label losses and the alignment objective (Eq. 1). Multispectral bands beside
image features come from :mod:`fedvlm.inputs.bands`. ``pipeline``: the two stages end to end (``fedvlm patch``), reusing the
federated round loop for the fine-tuning and the distillation (heads ``paint`` and
``ms_student``).
"""
