"""Moved to :mod:`fedvlm.inputs.features`; this name re-exports it for one release."""

from fedvlm.inputs.features import FeatureBatches, PixelBatches  # noqa: F401
