"""The head registry (``head.name`` in a config)."""

from fedvlm.registry import Registry

HEADS = Registry("head")
