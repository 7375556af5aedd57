"""RDB's adapter maths against direct loops and torch.nn.GRU."""

import math

import pytest
import torch

from fedvlm.retrieval.layers import (attention_pool, bigru, differential_attention, gru, reparameterized_lambda,
                                     slot_linear)


def test_slot_linear_uses_each_samples_own_weights():
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(4, 3, 5, generator=g), torch.randn(2, 5, 6, generator=g)
    bias = torch.randn(2, 6, generator=g)
    slot = torch.tensor([1, 0, 0, 1])
    out = slot_linear(x, weight, bias, slot)
    for b in range(4):
        torch.testing.assert_close(out[b], x[b] @ weight[slot[b]] + bias[slot[b]])


def test_reparameterized_lambda_is_eq3():
    q1, k1, q2, k2 = (torch.tensor([0.1, -0.2]), torch.tensor([0.3, 0.4]), torch.tensor([0.5, 0.0]),
                      torch.tensor([-0.1, 0.2]))
    expected = math.exp(0.1 * 0.3 - 0.2 * 0.4) - math.exp(0.5 * -0.1) + 0.8
    assert reparameterized_lambda(q1, k1, q2, k2, 0.8).item() == pytest.approx(expected, abs=1e-6)


def test_differential_attention_matches_a_direct_loop():
    g = torch.Generator().manual_seed(1)
    B, H, N, d, dv = 2, 2, 4, 3, 5
    q1, k1, q2, k2 = (torch.randn(B, H, N, d, generator=g) for _ in range(4))
    v = torch.randn(B, H, N, dv, generator=g)
    lam = torch.tensor([0.3, 0.9])
    out = differential_attention(q1, k1, q2, k2, v, lam)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                s1 = [sum(q1[b, h, i, c] * k1[b, h, j, c] for c in range(d)) / math.sqrt(d) for j in range(N)]
                s2 = [sum(q2[b, h, i, c] * k2[b, h, j, c] for c in range(d)) / math.sqrt(d) for j in range(N)]
                z1, z2 = sum(math.exp(s) for s in s1), sum(math.exp(s) for s in s2)
                weights = [math.exp(s1[j]) / z1 - lam[b] * math.exp(s2[j]) / z2 for j in range(N)]
                expected = sum(weights[j] * v[b, h, j] for j in range(N))
                torch.testing.assert_close(out[b, h, i], expected, atol=1e-5, rtol=1e-5)


def test_bigru_matches_torch_gru_per_sample_with_padding():
    g = torch.Generator().manual_seed(2)
    B, L, i, h = 3, 5, 4, 3
    x = torch.randn(B, L, i, generator=g)
    lengths = torch.tensor([5, 2, 0])
    modules = [torch.nn.GRU(i, h, batch_first=True, bidirectional=True) for _ in range(B)]
    take = lambda m, suffix: tuple(getattr(m, f"{p}_l0{suffix}").detach() for p in  # noqa: E731
                                   ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    forward = tuple(torch.stack(t) for t in zip(*[take(m, "") for m in modules]))
    backward = tuple(torch.stack(t) for t in zip(*[take(m, "_reverse") for m in modules]))
    out = bigru(x, lengths, forward, backward)
    assert out.shape == (B, L, 2 * h)
    for b in range(B):
        n = int(lengths[b])
        if n:
            expected, _ = modules[b](x[b : b + 1, :n])
            torch.testing.assert_close(out[b, :n], expected[0], atol=1e-5, rtol=1e-5)
        assert out[b, n:].abs().sum() == 0  # padding stays zero


def test_reverse_gru_alone_reads_each_sequence_backwards():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 2, generator=g)
    weights = (torch.randn(1, 6, 2, generator=g), torch.randn(1, 6, 2, generator=g), torch.zeros(1, 6),
               torch.zeros(1, 6))
    backwards = gru(x, torch.tensor([3]), *weights, reverse=True)
    flipped = gru(x[:, [2, 1, 0, 3]], torch.tensor([3]), *weights)
    torch.testing.assert_close(backwards[0, :3], flipped[0, [2, 1, 0]])


def test_attention_pool_matches_eq_4_to_6_and_ignores_masked_positions():
    g = torch.Generator().manual_seed(4)
    B, L, e, a = 3, 4, 3, 2
    h = torch.randn(B, L, e, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    weight = torch.randn(B, e, a, generator=g)
    bias, context = torch.randn(B, a, generator=g), torch.randn(B, a, generator=g)
    out = attention_pool(h, mask, weight, bias, context)
    for b in range(2):
        valid = [t for t in range(L) if mask[b, t]]
        scores = [float(torch.tanh(h[b, t] @ weight[b] + bias[b]) @ context[b]) for t in valid]
        z = sum(math.exp(s) for s in scores)
        expected = sum(math.exp(s) / z * h[b, t] for s, t in zip(scores, valid))
        torch.testing.assert_close(out[b], expected, atol=1e-6, rtol=1e-5)
    assert out[2].abs().sum() == 0
    h.requires_grad_(True)  # no NaN gradient either, even with an all-masked row
    attention_pool(h, mask, weight, bias, context).sum().backward()
    assert torch.isfinite(h.grad).all()
