"""Inputs: where batches come from (batch sources, and the Lightning data module for the Trainer)."""
