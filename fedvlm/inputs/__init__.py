"""Batch sources: what turns a run's table rows into the batches a head declares it reads (fedvlm.inputs.build)."""
