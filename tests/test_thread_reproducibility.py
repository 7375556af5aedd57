"""Matrix products give the same bits on 1 and 2 threads (what makes 1 and 2 processes agree).

Without ``MKL_CBWR=AUTO,STRICT`` (set by ``import fedvlm``), MKL's sgemm on our CPUs splits
products of 5-11 rows differently with 1 and 2 threads and the last bits differ."""

import os

import torch
import torch.nn.functional as F


def test_import_sets_strict_reproducibility():
    assert os.environ.get("MKL_CBWR", "").endswith("STRICT")


def test_small_matrix_products_do_not_depend_on_the_thread_count():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(384, 96, generator=generator)
    threads = torch.get_num_threads()
    try:
        for rows in range(1, 40):
            x = torch.randn(rows, 96, generator=generator)
            torch.set_num_threads(1)
            one = F.linear(x, weight)
            torch.set_num_threads(2)
            two = F.linear(x, weight)
            assert torch.equal(one, two), rows
    finally:
        torch.set_num_threads(threads)
