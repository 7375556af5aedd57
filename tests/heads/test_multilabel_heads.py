"""Multi-label heads: DualCoOp and PositiveCoOp against a transcription of the authors' scoring
code, CoOp with ASL on multi-hot labels, ``head.asl`` reaching the loss of every head, the
class-specific context (CSC) options, and batched == sequential training for every one of
FedMPT, DualCoOp and PositiveCoOp in each option (each client exactly as if alone)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedvlm.client.batches import FeatureBatches
from fedvlm.client.optim import SlotOptimizer
from fedvlm.client.training import ClientTask, train_pass
from fedvlm.config import OptimConfig, load_config, load_configs
from fedvlm.errors import ConfigError
from fedvlm.heads import HEADS, Batch
from fedvlm.losses import asymmetric_loss

CLASSES = ["car", "storage tank", "tree", "river"]


def _head(backbone, name, slots=1, **options):
    head_class = HEADS.get(name)
    defaults = {"fedmpt": {"conditions": ["green lawn", "night"]}, "dualcoop": {"n_ctx": 4, "output_scale": 5.0},
                "positive_coop": {"n_ctx": 4, "output_scale": 5.0}}.get(name, {})
    config = head_class.Config(name=name, **{**defaults, **options})
    return head_class(config, backbone, CLASSES, "a photo of a {}.", num_slots=slots, seed=0)


def _reference_dualcoop(image_features, text_pos, text_neg):
    """DualCoOp's forward (models/dualcoop.py) on [B, D, M] patch features: 20 * conv1d against
    the [neg; pos] text features, softmax over patches of the positive half, 5 * weighted sum,
    logits [B, 2, C]; the ASL of the authors softmaxes over that pair of 2."""
    text = F.normalize(torch.cat([text_neg, text_pos]), dim=-1)
    output = 20 * F.conv1d(F.normalize(image_features, dim=1), text[:, :, None])
    half = output.shape[1] // 2
    w_half = F.softmax(output[:, half:], dim=-1)
    output = 5 * (output * torch.cat([w_half, w_half], dim=1)).sum(-1)
    return output.view(output.shape[0], 2, half)


def test_dualcoop_equals_the_reference_scoring(tiny_backbone):
    head = _head(tiny_backbone, "dualcoop", global_region=False)
    generator = torch.Generator().manual_seed(0)
    patches, image = torch.randn(3, 9, tiny_backbone.embed_dim, generator=generator), torch.randn(3, tiny_backbone.embed_dim)
    batch = Batch(labels=torch.zeros(3, 4), slot=torch.zeros(3, dtype=torch.long), patches=patches, image=image)
    positive, negative = head.text_features(torch.tensor([0]))
    pair = _reference_dualcoop(patches.transpose(1, 2), positive[0], negative[0])
    torch.testing.assert_close(torch.sigmoid(head(batch)), torch.softmax(pair, dim=1)[:, 1], atol=1e-5, rtol=1e-5)
    # global_region (the default): the pooled embedding is scored as one more region
    with_global = _head(tiny_backbone, "dualcoop")
    pair = _reference_dualcoop(torch.cat([image[:, None], patches], 1).transpose(1, 2), positive[0], negative[0])
    torch.testing.assert_close(torch.sigmoid(with_global(batch)), torch.softmax(pair, dim=1)[:, 1], atol=1e-5, rtol=1e-5)
    # Eq. 2 as printed in FedMPT: the softmax over classes instead of patches
    classes = _head(tiny_backbone, "dualcoop", aggregate_over="classes", global_region=False)
    s_pos = 20 * torch.einsum("bmd,cd->bmc", F.normalize(patches, dim=-1), F.normalize(positive[0], dim=-1))
    s_neg = 20 * torch.einsum("bmd,cd->bmc", F.normalize(patches, dim=-1), F.normalize(negative[0], dim=-1))
    w = torch.softmax(s_pos, dim=-1)
    torch.testing.assert_close(classes(batch), 5 * ((w * s_pos).sum(1) - (w * s_neg).sum(1)), atol=1e-4, rtol=1e-5)
    assert head.parameters_per_client() == 2 * 4 * tiny_backbone.text_width
    default = HEADS.get("dualcoop")(HEADS.get("dualcoop").Config(name="dualcoop"), tiny_backbone, CLASSES, "{}")
    assert default.output_scale == pytest.approx(tiny_backbone.logit_scale.item() / 20)  # 5 on OpenAI CLIP


def test_positive_coop_negative_is_a_learned_embedding(tiny_backbone):
    head = _head(tiny_backbone, "positive_coop", global_region=False)
    patches = torch.randn(2, 5, tiny_backbone.embed_dim, generator=torch.Generator().manual_seed(1))
    logits = head(Batch(labels=torch.zeros(2, 4), slot=torch.zeros(2, dtype=torch.long), patches=patches))
    positive = head.layout.encode(tiny_backbone, head.context[:1])[0]
    pair = _reference_dualcoop(patches.transpose(1, 2), positive, head.negative_embedding[0])
    torch.testing.assert_close(torch.sigmoid(logits), torch.softmax(pair, dim=1)[:, 1], atol=1e-5, rtol=1e-5)
    assert set(head.trainable()) == {"context", "negative_embedding"}
    assert head.parameters_per_client() == 4 * tiny_backbone.text_width + 4 * tiny_backbone.embed_dim
    residual = _head(tiny_backbone, "positive_coop", positive_residual=True)
    assert residual.parameters_per_client() == head.parameters_per_client() + 4 * tiny_backbone.embed_dim


def test_coop_trains_with_asl_on_multi_hot_labels(tiny_backbone):
    """The existing CoOp head needs nothing for multi-label data: the base loss is ASL summed over
    classes (unknown = -1 skipped), averaged over each slot's samples."""
    head = _head(tiny_backbone, "coop", slots=2)
    image = torch.randn(4, tiny_backbone.embed_dim, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [-1, -1, -1, -1], [1, 1, 0, 0]], dtype=torch.float32)
    batch = Batch(labels=labels, slot=torch.tensor([0, 1, 0, 1]), image=image)
    logits = head(batch)
    per_sample = asymmetric_loss(logits, labels, reduction="none").sum(-1)
    torch.testing.assert_close(head.training_loss(batch), torch.stack([per_sample[[0, 2]].mean(), per_sample[[1, 3]].mean()]))
    head.training_loss(batch)[0].backward()
    assert head.context.grad[0].abs().sum() > 0 and head.context.grad[1].abs().sum() == 0


def _asl_equation(logits, labels, gamma_neg, gamma_pos, clip):
    """ASL (FedMPT Eq. 3; Ridnik et al.) per sample, one entry at a time in float64: positives
    -(1 - p)^gamma_pos log p, negatives -p_m^gamma_neg log(1 - p_m) with p_m = max(p - clip, 0),
    unknown (-1) entries skipped."""
    losses = []
    for row, targets in zip(logits.tolist(), labels.tolist()):
        total = 0.0
        for logit, target in zip(row, targets):
            p = 1 / (1 + math.exp(-logit))
            if target == 1:
                total -= (1 - p) ** gamma_pos * math.log(p)
            elif target == 0:
                shifted = max(p - clip, 0.0)
                total -= shifted**gamma_neg * math.log(1 - shifted)
        losses.append(total)
    return losses


@pytest.mark.parametrize("name", ["coop", "dualcoop", "positive_coop", "fedmpt", "maple", "fedpgp"])
def test_asl_settings_reach_every_heads_loss(tiny_backbone, name):
    """head.asl = {gamma_neg: 2, gamma_pos: 1, clip: 0.1} (DualCoOp's gammas, another clip): each
    slot's training loss is the mean over its samples of the ASL equation with those values."""
    options = {"maple": {"prompt_depth": 2}, "fedpgp": {"n_ctx": 4}}.get(name, {})
    settings = {"gamma_neg": 2.0, "gamma_pos": 1.0, "clip": 0.1}
    head = _head(tiny_backbone, name, slots=2, asl=settings, **options)
    assert head.config.asl.model_dump() == settings
    generator = torch.Generator().manual_seed(5)
    size = tiny_backbone.image_size
    labels = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [1, -1, 0, 0], [0, 0, 0, 1]], dtype=torch.float32)
    batch = Batch(labels=labels, slot=torch.tensor([0, 1, 0, 1]),
                  image=torch.randn(4, tiny_backbone.embed_dim, generator=generator),
                  patches=torch.randn(4, 5, tiny_backbone.embed_dim, generator=generator),
                  pixels=torch.randn(4, 3, size, size, generator=generator))
    with torch.no_grad():
        logits = head(batch)
        loss = head.sample_loss(logits, labels)
    expected = _asl_equation(logits.double(), labels, **settings)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    if name != "fedpgp":  # FedPGP adds its contrastive term to the slot loss
        torch.testing.assert_close(head.training_loss(batch).detach(),
                                   torch.tensor([(expected[0] + expected[2]) / 2, (expected[1] + expected[3]) / 2]))
    default = _head(tiny_backbone, name, **options)
    assert default.config.asl.model_dump() == {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05}
    assert not np.allclose(default.sample_loss(logits, labels).numpy(), expected, rtol=1e-3)


def test_asl_keys_load_from_yaml_and_survive_a_sweep_over_heads(tmp_path):
    """head.asl set once in a protocol file holds for every method of a sweep over head.name and
    over whole head sections; a bad value is one line naming the key."""
    protocol = Path("experiments/synthetic/multilabel.yaml").resolve()
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {protocol}\nhead: {{asl: {{gamma_neg: 2, gamma_pos: 1, clip: 0.1}}}}\n"
                     "sweep:\n  head.name: [fedmpt, dualcoop, coop]\n")
    runs = load_configs(sweep)
    assert [run.head.name for run in runs] == ["fedmpt", "dualcoop", "coop"]
    assert all(run.head.asl.model_dump() == {"gamma_neg": 2.0, "gamma_pos": 1.0, "clip": 0.1} for run in runs)
    sections = load_configs(sweep, {"sweep": {"head": [{"name": "positive_coop"}, {"name": "maple", "n_ctx": 2}]}})
    assert len(sections) == 6 and {run.head.asl.gamma_neg for run in sections} == {2.0}
    spelt_out = load_configs("experiments/synthetic/multilabel_heterogeneity.yaml")
    assert {tuple(run.head.asl.model_dump().values()) for run in spelt_out} == {(4.0, 0.0, 0.05)}
    override = load_config("experiments/synthetic/multilabel.yaml", ["head.asl.gamma_neg=2", "head.asl.gamma_pos=1"])
    assert override.head.asl.model_dump() == {"gamma_neg": 2.0, "gamma_pos": 1.0, "clip": 0.05}
    with pytest.raises(ConfigError, match=r"head\.asl\.clip") as error:
        load_config("experiments/synthetic/multilabel.yaml", ["head.asl.clip=1.5"])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name, contexts", [("dualcoop", ["positive_context", "negative_context"]),
                                            ("positive_coop", ["context"]), ("coop", ["context"])])
def test_class_specific_context_gives_each_class_its_own_prompt(tiny_backbone, name, contexts):
    """CSC: every context becomes [S, C, n_ctx, d_t], shared (aggregated), and the class count
    multiplies its parameters; two classes given the same name score alike only without CSC."""
    shared, specific = _head(tiny_backbone, name, slots=2), _head(tiny_backbone, name, slots=2, class_specific_context=True)
    n_ctx, width = shared.config.n_ctx, tiny_backbone.text_width
    for context in contexts:
        assert getattr(specific, context).shape == (2, len(CLASSES), n_ctx, width)
        assert getattr(shared, context).shape == (2, n_ctx, width)
    assert specific.shared_names() == shared.shared_names() and specific.private_names() == []
    grown = specific.parameters_per_client() - shared.parameters_per_client()
    assert grown == len(contexts) * (len(CLASSES) - 1) * n_ctx * width
    generator = torch.Generator().manual_seed(3)
    batch = Batch(labels=torch.zeros(2, 4), slot=torch.zeros(2, dtype=torch.long),
                  image=torch.randn(2, tiny_backbone.embed_dim, generator=generator),
                  patches=torch.randn(2, 5, tiny_backbone.embed_dim, generator=generator))
    torch.testing.assert_close(specific(batch), shared(batch))  # the same start: CSC repeats the context
    with torch.no_grad():
        for context in contexts:
            getattr(specific, context)[0, 0] += torch.randn(n_ctx, width, generator=generator)
    changed = (specific(batch) - shared(batch)).abs().amax(0) > 1e-4
    assert changed.tolist() == [True, False, False, False]  # class 0's own context moved only its logit


def _data(backbone, n=24, patches=6):
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(n, 4, generator=g) < 0.4).float()
    labels[torch.rand(n, 4, generator=g) < 0.2] = -1  # part annotation: unknown labels
    pooled = torch.randn(n, backbone.embed_dim, generator=g)
    return FeatureBatches(pooled, torch.randn(n, patches, backbone.embed_dim, generator=g), labels, "cpu")


def _train(backbone, name, slots, options=None):
    head = _head(backbone, name, slots=slots, **(options or {}))
    optimizer = SlotOptimizer(head.trainable(), OptimConfig(lr=0.05, batch_size=4))
    initial = head.read_slot(0)
    shares = {0: np.arange(0, 9), 1: np.arange(9, 13), 2: np.arange(13, 24)}  # 3, 1 and 3 batches
    data, results = _data(backbone), []
    for first in range(0, 3, slots):
        tasks = [ClientTask(k, shares[k], initial, None) for k in range(first, min(first + slots, 3))]
        results += train_pass(head, optimizer, tasks, data, batch_size=4, epochs=1, steps=None, lr=0.05, seed=7,
                              round_index=1)
    return {r.client: r for r in results}


@pytest.mark.parametrize("name, options", [
    ("fedmpt", {}), ("dualcoop", {}), ("positive_coop", {}),
    ("fedmpt", {"ot_marginals": "patches_to_conditions"}),
    ("fedmpt", {"class_specific_context": True, "condition_tokens": 2}),
    ("dualcoop", {"class_specific_context": True}), ("positive_coop", {"class_specific_context": True}),
    ("dualcoop", {"asl": {"gamma_neg": 2, "gamma_pos": 1}}),
], ids=lambda value: value if isinstance(value, str) else "-".join(map(str, value)) or "default")
def test_batched_clients_equal_sequential_clients(tiny_backbone, name, options):
    sequential, batched = _train(tiny_backbone, name, 1, options), _train(tiny_backbone, name, 3, options)
    for k in range(3):
        for key, value in sequential[k].params.items():
            torch.testing.assert_close(batched[k].params[key], value, atol=1e-5, rtol=1e-5)
        assert abs(batched[k].loss - sequential[k].loss) < 1e-5
    moved = [key for key, value in sequential[0].params.items() if not torch.equal(value, sequential[2].params[key])]
    assert moved, "the clients did not train"


@pytest.mark.parametrize("name, options", [("maple", {"prompt_depth": 2}), ("fedpgp", {"n_ctx": 4})])
def test_issue4_heads_train_on_multi_hot_labels(tiny_backbone, name, options):
    """Fed-MaPLe and FedPGP (the multi-label tables' baselines) take {1, 0, -1} targets through the
    same base ASL: a finite loss per slot, gradients on every slot that has samples, and unknown
    labels contributing nothing."""
    head = _head(tiny_backbone, name, slots=2, **options)
    generator = torch.Generator().manual_seed(4)
    size = tiny_backbone.image_size
    batch = Batch(labels=torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [1, -1, 0, 0]], dtype=torch.float32),
                  slot=torch.tensor([0, 1, 0]), image=torch.randn(3, tiny_backbone.embed_dim, generator=generator),
                  pixels=torch.randn(3, 3, size, size, generator=generator))
    loss = head.training_loss(batch)
    assert loss.shape == (2,) and bool(torch.isfinite(loss).all())
    grads = torch.autograd.grad(loss.sum(), [p for p in head.trainable().values()], allow_unused=True)
    assert any(g is not None and g[0].abs().sum() > 0 for g in grads)
    assert any(g is not None and g[1].abs().sum() > 0 for g in grads)
    with torch.no_grad():  # nothing known, nothing supervised
        assert float(head.sample_loss(head(batch), torch.full((3, 4), -1.0)).abs().sum()) == 0.0
