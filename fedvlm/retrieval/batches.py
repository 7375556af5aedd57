"""Moved to :mod:`fedvlm.inputs.captions`; this name re-exports it for one release."""

from fedvlm.inputs.captions import SENTENCE_END, CaptionBatches, sentence_end_ids, sentence_structure  # noqa: F401
