"""Evaluation scores every test batch with fixed prompts: the text encoder runs once per distinct
prompt set (FrozenCLIP.reuse_text), and the table equals scoring each batch on its own."""

import numpy as np
import torch

from fedvlm.client.batches import FeatureBatches
from fedvlm.evaluation import client_scores, server_scores
from fedvlm.heads.coop import CoOpConfig, CoOpHead
from fedvlm.heads.maple import MaPLeConfig, MaPLeHead

CLASSES = ["forest", "harbor", "river", "beach"]


def _count_text_forwards(backbone):
    # ln_final closes every text path (whole prompts, shared prefix, deep prompts) exactly once
    calls = []
    handle = backbone.text_tower.ln_final.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def _features(backbone, n=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return FeatureBatches(torch.randn(n, backbone.embed_dim, generator=generator), None,
                          torch.arange(n) % len(CLASSES), "cpu")


def test_server_table_runs_the_text_encoder_once_and_equals_per_batch_scores(tiny_backbone):
    head = CoOpHead(CoOpConfig(name="coop", n_ctx=4), tiny_backbone, CLASSES, "a photo of a {}.", num_slots=2)
    data, rows = _features(tiny_backbone), np.arange(10)
    state = {k: v + 0.01 for k, v in head.read_slot(0).items()}
    calls, handle = _count_text_forwards(tiny_backbone)
    table = server_scores(head, data, rows, state, batch_size=3)  # 4 batches
    handle.remove()
    assert len(calls) == 1
    with torch.no_grad():  # reference: every batch scored on its own, encoder run each time
        expected = torch.cat([head(data.batch(rows[i : i + 3], np.zeros(len(rows[i : i + 3]), dtype=np.int64)))
                              for i in range(0, 10, 3)])
    torch.testing.assert_close(table, expected, rtol=0, atol=0)
    calls, handle = _count_text_forwards(tiny_backbone)
    server_scores(head, data, rows, {k: v + 0.02 for k, v in state.items()}, batch_size=3)  # new prompts
    handle.remove()
    assert len(calls) == 1  # the memo lived for one table only: new prompts are encoded


def test_client_tables_keep_each_clients_prompts_apart(tiny_backbone):
    head = CoOpHead(CoOpConfig(name="coop", n_ctx=4), tiny_backbone, CLASSES, "a photo of a {}.", num_slots=2)
    data = _features(tiny_backbone)
    base = head.read_slot(0)
    states = [{k: v + 0.05 * (k_ + 1) for k, v in base.items()} for k_ in range(3)]
    test_rows = [np.arange(0, 4), np.arange(4, 7), np.arange(7, 10)]
    table = client_scores(head, data, test_rows, lambda k: states[k], batch_size=2)
    for client, rows in enumerate(test_rows):  # each client's own model, scored alone
        head.write_slot(0, states[client])
        with torch.no_grad():
            alone = head(data.batch(rows, np.zeros(len(rows), dtype=np.int64)))
        torch.testing.assert_close(table[rows], alone, rtol=1e-6, atol=1e-6)


def test_deep_prompted_text_is_reused_only_for_identical_inputs(tiny_backbone):
    generator = torch.Generator().manual_seed(1)
    width = tiny_backbone.text_width
    embeddings = torch.randn(3, 8, width, generator=generator)
    eot = torch.full((3,), 7)
    prompt_index = torch.tensor([[-1, 0, 1, -1, -1, -1, -1, -1]] * 3)
    layers = torch.randn(3, 1, 2, width, generator=generator)
    with torch.no_grad():
        plain = tiny_backbone.encode_deep_prompted_text(embeddings, eot, layers, prompt_index)
        other = tiny_backbone.encode_deep_prompted_text(embeddings, eot, layers + 1, prompt_index)
        calls = []  # the deep path runs the blocks one by one: count the final norm instead
        handle = tiny_backbone.text_tower.ln_final.register_forward_hook(lambda *_: calls.append(1))
        with tiny_backbone.reuse_text():
            again = [tiny_backbone.encode_deep_prompted_text(embeddings, eot, layers, prompt_index) for _ in range(3)]
            changed = tiny_backbone.encode_deep_prompted_text(embeddings, eot, layers + 1, prompt_index)
        handle.remove()
    assert len(calls) == 2  # three identical calls encoded once, the changed prompts once
    assert all(torch.equal(a, plain) for a in again) and torch.equal(changed, other)
    assert not torch.equal(plain, other)
