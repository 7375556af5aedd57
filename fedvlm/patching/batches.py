"""Moved to :mod:`fedvlm.inputs.bands`; this name re-exports it for one release."""

from fedvlm.inputs.bands import BandBatches  # noqa: F401
