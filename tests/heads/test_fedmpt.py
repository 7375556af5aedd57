"""FedMPT: condition prompts equal the written-out text (shared and class-specific class tokens),
the forward pass equals a direct transcription of Eq. 6-11 solved with POT in both readings of
the OT marginals, the effective-regions diagnostic on hand cases, the ablation switches remove
exactly their module, and the parameter counts on ViT-B-16 (``fedvlm describe``) are the ones
docs/MULTILABEL.md explains."""

import numpy as np
import ot as pot
import pytest
import torch

from fedvlm.config import load_config, load_configs
from fedvlm.describe import describe
from fedvlm.errors import ConfigError
from fedvlm.heads import Batch
from fedvlm.heads.fedmpt import (
    FedMPTConfig,
    FedMPTHead,
    condition_cost,
    effective_regions,
    load_conditions,
    patch_marginal,
)

CLASSES = ["car", "storage tank", "tree"]


def _head(backbone, slots=1, **options):
    config = FedMPTConfig(name="fedmpt", **{"conditions": ["green lawn", "night"], **options})
    return FedMPTHead(config, backbone, CLASSES, "a photo of a {}.", num_slots=slots, seed=0)


def _words(backbone, phrase):
    ids = backbone.tokenize([phrase])
    return backbone.token_embeddings(ids)[0, 1 : 1 + int(backbone.eot_positions(ids)[0]) - 1]


def test_condition_prompts_equal_the_written_out_prompts(tiny_backbone):
    """[L]x2 <condition> [G]x2 <class>. with the learnable tokens set to real words must encode
    like open_clip's encode_text of the sentence; each condition uses its own L, all share G."""
    head = _head(tiny_backbone, condition_tokens=2, class_tokens=2)
    with torch.no_grad():
        head.condition_context[0, 0] = _words(tiny_backbone, "in the")
        head.condition_context[0, 1] = _words(tiny_backbone, "on a")
        head.class_context[0] = _words(tiny_backbone, "a big")
    texts = [f"{prefix} {condition} a big {name}." for prefix, condition in (("in the", "green lawn"), ("on a", "night"))
             for name in CLASSES]
    expected = tiny_backbone.model.encode_text(tiny_backbone.tokenize(texts)).view(2, 3, -1)
    ours = head.layout.encode(tiny_backbone, torch.cat([head.condition_context[:1],
                                                        head.class_context[:1, None].expand(-1, 2, -1, -1)], dim=2))
    torch.testing.assert_close(ours[0], expected, atol=1e-5, rtol=1e-5)


def _randomise(head, generator):
    with torch.no_grad():
        for name, parameter in head.trainable().items():
            if name in ("adapter_up", "gate_up"):  # zero at initialisation (LoRA): make them matter
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def _oracle(head, image, patches, slot, return_weights=False):
    """Eq. 6-11 for one image, transcribed with NumPy loops and POT's Sinkhorn (float64); the
    regions are the pooled embedding followed by the patch tokens. ``patches_to_classes``: one
    plan [M, C] per condition; ``patches_to_conditions``: one plan [M, N] per class, the patch
    marginal being Eq. 8's averaged over conditions. -> logits [C] (and the weights [N, M, C])."""
    config = head.config
    numpy = lambda t: t.detach().double().numpy()  # noqa: E731
    text = numpy(head.text_features(torch.tensor([slot]))[0])  # [N, C, D], normalised
    f = numpy(torch.cat([image[None], patches]))  # [1 + M, D]
    N, M, C = text.shape[0], f.shape[0], text.shape[1]
    s, S, a = np.zeros((N, M, C)), np.zeros((N, M, C)), np.zeros((N, M))
    for n in range(N):
        down, up = numpy(head.adapter_down[slot, n]), numpy(head.adapter_up[slot, n])
        adapted = f + f @ down @ up  # Eq. 6 (LoRA-like, residual)
        for m in range(M):
            for c in range(C):
                s[n, m, c] = config.similarity_scale * adapted[m] @ text[n, c] / np.linalg.norm(adapted[m])
        S[n] = np.exp(s[n] / config.tau) / np.exp(s[n] / config.tau).sum(0, keepdims=True)  # 1 - Eq. 7
        entropy = np.zeros(M)
        for m in range(M):
            q = np.exp(s[n, m] / config.tau) / np.exp(s[n, m] / config.tau).sum()
            entropy[m] = -(q * np.log(q)).sum()
        a[n] = np.exp(entropy / config.tau) / np.exp(entropy / config.tau).sum()  # Eq. 8
    weights = np.zeros((N, M, C))
    solve = lambda rows, columns, cost: pot.sinkhorn(rows, columns, cost, config.ot_epsilon,  # noqa: E731
                                                     numItermax=100_000, stopThr=1e-13)
    if config.ot_marginals == "patches_to_classes":
        for n in range(N):
            weights[n] = C * solve(a[n], np.full(C, 1 / C), 1 - S[n])  # every class with unit mass
    else:
        for c in range(C):
            plan = solve(a.mean(0), np.full(N, 1 / N), 1 - S[:, :, c].T)  # [M, N]
            weights[:, :, c] = N * plan.T  # every condition with unit mass
    predictions = (weights * s).sum(1)  # psi [N, C]
    omega = f.mean(0) @ numpy(head.gate_down[slot]) @ numpy(head.gate_up[slot])
    gate = np.exp(omega - omega.max()) / np.exp(omega - omega.max()).sum()  # Eq. 11
    logits = head.output_scale * (gate[:, None] * predictions).sum(0)
    return (logits, weights) if return_weights else logits


def test_forward_equals_a_direct_transcription_of_the_equations(tiny_backbone):
    generator = torch.Generator().manual_seed(3)
    head = _head(tiny_backbone, slots=2, ot_iterations=3000)
    _randomise(head, generator)
    patches = torch.randn(3, 10, tiny_backbone.embed_dim, generator=generator)
    image = torch.randn(3, tiny_backbone.embed_dim, generator=generator)
    slot = torch.tensor([1, 0, 1])
    logits = head(Batch(labels=torch.zeros(3, 3), slot=slot, patches=patches, image=image))
    for b in range(3):
        np.testing.assert_allclose(logits[b].detach().numpy(), _oracle(head, image[b], patches[b], int(slot[b])),
                                   atol=2e-4)


def test_patches_to_conditions_plan_and_forward_equal_pot_per_image_and_class(tiny_backbone):
    """The other reading of the marginals: one plan [M, N] per (image, class) between the
    patches and the N = 3 condition prompts, batched, against POT's float64 Sinkhorn looped over
    (image, class); its plan differs from the default reading's."""
    generator = torch.Generator().manual_seed(6)
    options = {"conditions": ["green lawn", "night", "fog"], "ot_iterations": 3000}
    head = _head(tiny_backbone, slots=2, ot_marginals="patches_to_conditions", **options)
    _randomise(head, generator)
    patches = torch.randn(3, 9, tiny_backbone.embed_dim, generator=generator) * 2
    image = torch.randn(3, tiny_backbone.embed_dim, generator=generator)
    slot = torch.tensor([0, 1, 1])
    batch = Batch(labels=torch.zeros(3, 3), slot=slot, patches=patches, image=image)
    logits, weights = head(batch), head.region_weights(batch)
    assert weights.shape == (3, 3, 10, 3)  # [B, N, 1 + M, C]
    torch.testing.assert_close(weights.sum(2), torch.ones(3, 3, 3), atol=1e-5, rtol=0)  # unit mass per (n, c)
    for b in range(3):
        expected_logits, expected_weights = _oracle(head, image[b], patches[b], int(slot[b]), return_weights=True)
        np.testing.assert_allclose(weights[b].numpy(), expected_weights, atol=1e-5)
        np.testing.assert_allclose(logits[b].detach().numpy(), expected_logits, atol=2e-4)
    default = _head(tiny_backbone, slots=2, **options)
    default.load_state_dict(head.state_dict())
    assert not torch.allclose(default.region_weights(batch), weights, atol=1e-3)


def test_effective_regions_on_hand_cases():
    columns = torch.tensor([[1.0, 0.0, 0.0, 0.0],  # all mass on one region
                            [0.25, 0.25, 0.25, 0.25],  # uniform over M = 4
                            [0.0, 3.0, 0.0, 3.0],  # two equal regions, unnormalised
                            [0.5, 0.25, 0.25, 0.0],  # exp(1.5 ln 2) = 2 sqrt 2
                            [0.0, 0.0, 0.0, 0.0]])  # no mass: 0 regions
    torch.testing.assert_close(effective_regions(columns, dim=-1), torch.tensor([1.0, 4.0, 2.0, 2 * 2**0.5, 0.0]))
    # the head's layout [B, N, M, C]: one value per (image, condition, class), regions on dim -2
    weights = columns.T.reshape(1, 1, 4, 5)
    torch.testing.assert_close(effective_regions(weights), torch.tensor([[[1.0, 4.0, 2.0, 2 * 2**0.5, 0.0]]]))


def test_region_weights_are_the_plan_of_the_default_reading(tiny_backbone):
    """region_weights is C times the plan [M, C] per (image, condition) (each class unit mass),
    or softmax_m(s / tau) without OT, whatever its columns' spread."""
    head = _head(tiny_backbone)
    _randomise(head, torch.Generator().manual_seed(8))
    patches = torch.randn(2, 7, tiny_backbone.embed_dim, generator=torch.Generator().manual_seed(9))
    batch = Batch(labels=torch.zeros(2, 3), slot=torch.zeros(2, dtype=torch.long), patches=patches, image=patches[:, 0])
    weights = head.region_weights(batch)
    for b in range(2):
        np.testing.assert_allclose(weights[b].numpy(), _oracle(head, batch.image[b], patches[b], 0, True)[1], atol=1e-5)
    count = effective_regions(weights)
    assert count.shape == (2, 2, 3) and bool(((count >= 1) & (count <= 8 + 1e-4)).all())
    no_ot = _head(tiny_backbone, modules=["condition_prompts", "adapters", "gate"])
    no_ot.load_state_dict(head.state_dict())
    torch.testing.assert_close(no_ot.region_weights(batch), torch.softmax(no_ot.region_similarity(batch) / 4, dim=2))


def test_class_specific_class_tokens_equal_the_written_out_prompts(tiny_backbone):
    """class_specific_context: each class its own G; the text encoder's shared prefix of a
    condition's prompts must stop before G (here each class gets other words)."""
    head = _head(tiny_backbone, slots=2, condition_tokens=2, class_tokens=2, class_specific_context=True)
    assert head.class_context.shape == (2, len(CLASSES), 2, tiny_backbone.text_width)
    assert head.layout.shared_prefix <= 1 + 2 + 2  # [SOS] [L]x2 "green lawn" at most
    words = ["a big", "the red", "one old"]
    with torch.no_grad():
        head.condition_context[1, 0] = _words(tiny_backbone, "in the")
        head.condition_context[1, 1] = _words(tiny_backbone, "on a")
        for c, phrase in enumerate(words):
            head.class_context[1, c] = _words(tiny_backbone, phrase)
    texts = [f"{prefix} {condition} {words[c]} {name}." for prefix, condition in (("in the", "green lawn"), ("on a", "night"))
             for c, name in enumerate(CLASSES)]
    expected = torch.nn.functional.normalize(tiny_backbone.model.encode_text(tiny_backbone.tokenize(texts)), dim=-1)
    torch.testing.assert_close(head.text_features(torch.tensor([1]))[0], expected.view(2, 3, -1), atol=1e-5, rtol=1e-5)
    shared = _head(tiny_backbone, condition_tokens=2, class_tokens=2)
    assert head.parameters_per_client() - shared.parameters_per_client() == (len(CLASSES) - 1) * 2 * tiny_backbone.text_width
    assert head.shared_names() == list(head.trainable()) and head.private_names() == []


def test_cost_and_patch_marginal_against_loops():
    generator = torch.Generator().manual_seed(0)
    similarity = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64) * 4
    cost = condition_cost(similarity, tau=4.0)
    torch.testing.assert_close(cost.sum(-2), torch.full((2, 3), 5 - 1.0, dtype=torch.float64))  # columns of S sum to 1
    assert bool((cost >= 0).all() and (cost <= 1).all())
    for mode, sign in (("entropy", 1), ("negative_entropy", -1)):
        a = patch_marginal(similarity, 4.0, mode)
        for b in range(2):
            q = torch.softmax(similarity[b] / 4, dim=-1)
            h = -(q * q.log()).sum(-1)
            torch.testing.assert_close(a[b], torch.softmax(sign * h / 4, dim=0))
    # confident patches get more mass with negative_entropy, less with entropy (as printed)
    confident = torch.tensor([[[40.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    assert patch_marginal(confident, 4.0, "negative_entropy")[0, 0] > 0.5 > patch_marginal(confident, 4.0)[0, 0]
    torch.testing.assert_close(patch_marginal(confident, 4.0, "uniform"), torch.full((1, 2), 0.5))


@pytest.mark.parametrize("modules, present, conditions", [
    (["condition_prompts", "adapters", "optimal_transport", "gate"],
     {"condition_context", "class_context", "adapter_down", "adapter_up", "gate_down", "gate_up"}, 2),
    (["condition_prompts"], {"condition_context", "class_context"}, 2),
    (["adapters"], {"class_context", "adapter_down", "adapter_up"}, 1),
    (["condition_prompts", "adapters", "gate"],
     {"condition_context", "class_context", "adapter_down", "adapter_up", "gate_down", "gate_up"}, 2),
])
def test_ablation_switches_remove_their_module(tiny_backbone, modules, present, conditions):
    head = _head(tiny_backbone, modules=modules)
    assert set(head.trainable()) == present and head.shared_names() == list(head.trainable())
    assert head.num_conditions == conditions
    d, t, r, n = tiny_backbone.embed_dim, tiny_backbone.text_width, 32, conditions
    expected = 4 * t + ("condition_prompts" in modules) * n * 4 * t + ("adapters" in modules) * n * 2 * d * r \
        + ("gate" in modules and n > 1) * (d * r + r * n)
    assert head.parameters_per_client() == expected
    logits = head(Batch(labels=torch.zeros(2, 3), slot=torch.zeros(2, dtype=torch.long),
                        patches=torch.randn(2, 6, d), image=torch.randn(2, d)))
    assert logits.shape == (2, 3) and bool(torch.isfinite(logits).all())


def test_without_ot_the_patches_are_weighted_by_the_softmax_of_eq7(tiny_backbone):
    head = _head(tiny_backbone, modules=["condition_prompts"])
    generator = torch.Generator().manual_seed(1)
    patches, image = torch.randn(2, 7, tiny_backbone.embed_dim, generator=generator), torch.randn(2, tiny_backbone.embed_dim)
    psi = head.condition_predictions(Batch(labels=torch.zeros(2, 3), slot=torch.zeros(2, dtype=torch.long),
                                           patches=patches, image=image))
    assert head.output_scale == pytest.approx(tiny_backbone.logit_scale.item() / 20)  # 5 on OpenAI CLIP
    text = head.text_features(torch.tensor([0]))[0]
    regions = torch.cat([image[:, None], patches], dim=1)  # the pooled embedding is region 0
    s = 20 * torch.einsum("bmd,ncd->bnmc", torch.nn.functional.normalize(regions, dim=-1), text)
    torch.testing.assert_close(psi, (torch.softmax(s / 4, dim=2) * s).sum(2))


def test_plan_does_not_depend_on_the_rest_of_the_batch(tiny_backbone):
    """A fixed number of Sinkhorn iterations: an image's scores are the same alone or batched."""
    head = _head(tiny_backbone, slots=2)
    _randomise(head, torch.Generator().manual_seed(5))
    patches = torch.randn(5, 8, tiny_backbone.embed_dim, generator=torch.Generator().manual_seed(2)) * 3
    slot = torch.tensor([0, 1, 0, 1, 1])
    image = patches.mean(1)
    together = head(Batch(labels=torch.zeros(5, 3), slot=slot, patches=patches, image=image))
    for b in range(5):
        alone = head(Batch(labels=torch.zeros(1, 3), slot=slot[b : b + 1], patches=patches[b : b + 1],
                           image=image[b : b + 1]))
        torch.testing.assert_close(together[b : b + 1], alone, atol=1e-5, rtol=1e-5)


def test_literal_softmax_prediction_is_zero_for_a_uniform_plan(tiny_backbone):
    """prediction: softmax (psi = sum T S as printed) gives log(M C psi) = 0 when nothing in the
    image distinguishes the patches (identical patches: S = 1/M, uniform plan)."""
    head = _head(tiny_backbone, prediction="softmax", modules=["condition_prompts", "optimal_transport"])
    patches = torch.randn(1, 1, tiny_backbone.embed_dim).expand(2, 6, -1).contiguous()
    logits = head(Batch(labels=torch.zeros(2, 3), slot=torch.zeros(2, dtype=torch.long), patches=patches,
                        image=patches[:, 0]))
    torch.testing.assert_close(logits, torch.zeros(2, 3), atol=1e-5, rtol=0)


def test_conditions_come_from_shipped_files_paths_or_lists(tmp_path):
    assert load_conditions("voc2007")[:2] == ["spatial layout", "object pose"]
    assert len(load_conditions("default")) == 5
    file = tmp_path / "mine.txt"
    file.write_text("# a comment\nsnow\n\nfog\n")
    assert load_conditions(str(file)) == ["snow", "fog"]
    assert load_conditions([" rain ", ""]) == ["rain"]
    with pytest.raises(ConfigError, match="neither a file nor a shipped condition set.*voc2007"):
        load_conditions("no_such_set")
    with pytest.raises(ConfigError, match="each module at most once"):
        load_config(overrides=["name=x", "data.dataset=voc2007", "head.name=fedmpt", "head.modules=[gate, gate]"])


def test_describe_on_vit_b16_counts_the_parameters_table5_compares():
    """N = 5 conditions, C = 20 (VOC2007), D = 512, d_t = 512, D_s = 32 (docs/MULTILABEL.md)."""
    counts = describe(load_configs("experiments/fedmpt_voc.yaml")[0])
    prompts = 5 * 4 * 512 + 4 * 512  # condition-level tokens per condition + shared class-level tokens
    adapters = 5 * (512 * 32 + 32 * 512)
    gate = 512 * 32 + 32 * 5
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == prompts + adapters + gate == 192_672
    assert counts["private_parameters"] == 0 and counts["classes"] == 20
    poscoop = describe(load_configs("experiments/fedmpt_voc.yaml", ["head.name=positive_coop"])[0])
    assert poscoop["trainable_parameters"] == 16 * 512 + 20 * 512 == 18_432  # Table 5: 0.02 M
    # class-specific class tokens: G is 4 x 512 per class instead of one shared 4 x 512
    csc = describe(load_configs("experiments/fedmpt_voc.yaml", ["head.class_specific_context=true"])[0])
    assert csc["transmitted_parameters"] == 192_672 + 19 * 4 * 512 == 231_584
    dualcoop = describe(load_configs("experiments/fedmpt_voc.yaml", ["head.name=dualcoop", "head.class_specific_context=true"])[0])
    assert dualcoop["transmitted_parameters"] == 20 * 2 * 16 * 512 == 327_680  # a positive and a negative prompt per class
