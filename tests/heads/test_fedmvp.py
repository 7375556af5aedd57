"""FedMVP: the PromptFormer against torch's own modules (``nn.MultiheadAttention``, ``nn.LayerNorm``,
``nn.Linear``, ``nn.AdaptiveAvgPool1d``: the authors' ``CrossAttention``) loaded with the head's
parameters, the attribute sentences against ``encode_text`` of the written-out text, the logits
and the loss written out, the shipped attribute files against the datasets' class names, the
one-line errors, and the parameter count of ``fedvlm describe`` on ViT-B-16 (batched ==
sequential, the slot rule and save / load are tests/heads/test_every_head.py's)."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from head_checks import assert_multilabel_round_batched_equals_sequential
from fedvlm.config import load_configs
from fedvlm.data.datasets import _synthetic_names
from fedvlm.describe import describe
from fedvlm.errors import ConfigError
from fedvlm.heads import HEADS, Batch
from fedvlm.heads.fedmvp import ATTRIBUTES_DIR, descriptor_sentence, load_attributes, patch_embeddings

CLASSES = ["car", "storage tank", "tree"]
TEMPLATE = "an aerial photo of a {}."
ATTRIBUTES = {"car": ["metal", "a small roof"], "Storage_Tank": ["often a round shape"], "tree": ["green leaves"]}
# the 20 VOC2007 classes as the voc2007 reader names them (fedvlm.data.datasets._VOC_NAMES)
VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table", "dog",
       "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor"]


def _head(backbone, slots=1, **options):
    head_class = HEADS.get("fedmvp")
    config = head_class.Config(name="fedmvp", **{"attributes": ATTRIBUTES, "feedforward_mult": 2, **options})
    return head_class(config, backbone, CLASSES, TEMPLATE, num_slots=slots, seed=0)


def _pixels(count=3, seed=0):
    return torch.randn(count, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _batch(backbone, pixels, labels=None):
    image = backbone.encode_images(pixels).pooled
    labels = labels if labels is not None else torch.zeros(len(pixels), len(CLASSES))
    return Batch(labels=labels, slot=torch.zeros(len(pixels), dtype=torch.long), image=image, pixels=pixels)


def _reference_prompts(head, patches):
    """The authors' CrossAttention (PreNorm: query and key normalised, value not; then
    ``x = FF(x) + x``) and AdaptiveAvgPool1d(4), as torch modules holding slot 0's parameters."""
    p = {name: getattr(head, name)[0].detach() for name in head.parameter_names}
    width = patches.shape[-1]
    text = nn.Linear(head.backbone.embed_dim, width)
    attention = nn.MultiheadAttention(width, head.config.attention_heads, kdim=width, vdim=width, batch_first=True)
    norm_q, norm_c, norm_f = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
    hidden = head.config.feedforward_mult * width
    ff_in, ff_out = nn.Linear(width, 2 * hidden), nn.Linear(hidden, width)
    with torch.no_grad():
        for module, weight, bias in [(text, "text_projection_weight", "text_projection_bias"),
                                     (norm_q, "query_norm_weight", "query_norm_bias"),
                                     (norm_c, "context_norm_weight", "context_norm_bias"),
                                     (norm_f, "feedforward_norm_weight", "feedforward_norm_bias"),
                                     (ff_in, "feedforward_in_weight", "feedforward_in_bias"),
                                     (ff_out, "feedforward_out_weight", "feedforward_out_bias"),
                                     (attention.out_proj, "attention_out_weight", "attention_out_bias")]:
            module.weight.copy_(p[weight])
            module.bias.copy_(p[bias])
        attention.in_proj_weight.copy_(p["attention_in_weight"])
        attention.in_proj_bias.copy_(p["attention_in_bias"])
        context = text(head.attribute_features).expand(len(patches), -1, -1)
        x, _ = attention(norm_q(patches), norm_c(context), context)
        values, gates = ff_in(norm_f(x)).chunk(2, dim=-1)
        x = ff_out(values * F.gelu(gates)) + x
        return nn.AdaptiveAvgPool1d(4)(x.permute(0, 2, 1)).permute(0, 2, 1)


def _perturbed(backbone):
    """A head whose LayerNorms and biases are not at their initial 1 / 0 (so every parameter
    shapes the output the reference computes)."""
    head = _head(backbone)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name in head.parameter_names:
            param = getattr(head, name)
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return head


def test_prompt_former_equals_torch_cross_attention_modules(tiny_backbone):
    head = _perturbed(tiny_backbone)
    pixels = _pixels()
    patches = patch_embeddings(tiny_backbone, pixels)
    visual = tiny_backbone.model.visual
    with torch.no_grad():  # the embeddings before ln_pre: open_clip's _embeds is ln_pre of them plus the class token
        embedded = visual._embeds(pixels)
        torch.testing.assert_close(visual.ln_pre(patches), embedded[:, 1:], atol=1e-5, rtol=1e-5)
        prompts = head.visual_prompts(_batch(tiny_backbone, pixels))
    assert prompts.shape == (3, 4, visual.transformer.width)
    torch.testing.assert_close(prompts, _reference_prompts(head, patches), atol=1e-4, rtol=1e-4)


def test_attribute_sentences_logits_and_loss(tiny_backbone):
    head = _perturbed(tiny_backbone)
    sentences = ["an aerial photo of a car, which has metal", "an aerial photo of a car, which is a small roof",
                 "an aerial photo of a storage tank, which often a round shape",
                 "an aerial photo of a tree, which has green leaves"]
    expected = F.normalize(tiny_backbone.encode_text(sentences), dim=-1)
    torch.testing.assert_close(head.attribute_features, expected, atol=1e-5, rtol=1e-5)
    pixels = _pixels(seed=1)
    labels = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    batch = _batch(tiny_backbone, pixels, labels)
    with torch.no_grad():
        prompts = _reference_prompts(head, patch_embeddings(tiny_backbone, pixels))
        image = F.normalize(tiny_backbone.encode_prompted_images(pixels, prompts[:, None]).pooled, dim=-1)
        cos = image @ expected.T  # [B, 4 sentences]
        logits = tiny_backbone.logit_scale * torch.stack([cos[:, :2].mean(1), cos[:, 2], cos[:, 3]], dim=1)
        torch.testing.assert_close(head(batch), logits, atol=1e-4, rtol=1e-4)
        zero_shot = F.normalize(batch.image, dim=-1)
        loss = head.sample_loss(logits, labels) + 10.0 * (1 - (image * zero_shot).sum(-1))
        torch.testing.assert_close(head.training_loss(batch)[0], loss.mean(), atol=1e-4, rtol=1e-4)
    assert float((1 - (image * zero_shot).sum(-1)).abs().max()) > 1e-4  # the prompts moved the embedding


def test_without_attributes_each_class_is_its_prompt(tiny_backbone):
    head = _head(tiny_backbone, attributes=None)
    torch.testing.assert_close(head.attribute_features,
                               F.normalize(tiny_backbone.encode_text([TEMPLATE.format(c) for c in CLASSES]), dim=-1))
    assert head.averaging.shape == (3, 3)


def test_descriptor_sentences_follow_the_authors_grammar():
    assert descriptor_sentence("wings") == "which has wings"
    assert descriptor_sentence("a tail fin") == "which is a tail fin"
    assert descriptor_sentence("used for racing") == "which is used for racing"
    assert descriptor_sentence("often a mast") == "which often a mast"
    assert descriptor_sentence("antennas") == "which has antennas"  # the code's startswith('a') would say "which is"


@pytest.mark.parametrize("name, classes", [("voc2007", VOC), ("synthetic_voc", sorted(_synthetic_names().values()))])
def test_shipped_attribute_files_cover_their_dataset(name, classes):
    sentences, owners = load_attributes(name, classes, "a photo of a {}.")
    assert sorted(set(owners)) == list(range(len(classes)))
    assert all(2 <= owners.count(c) <= 4 for c in range(len(classes)))
    assert all(s.startswith("a photo of a ") and ", which " in s for s in sentences)


@pytest.mark.parametrize("name, count", [("coco2014", 80), ("nuswide", 81)])
def test_shipped_coco_and_nuswide_files_list_every_class(name, count):
    mapping = json.loads((ATTRIBUTES_DIR / f"{name}_attributes.json").read_text())
    classes = [key for key in mapping if not key.startswith("_")]
    assert len(classes) == count
    sentences, owners = load_attributes(name, classes, "a photo of a {}.")
    assert sorted(set(owners)) == list(range(count)) and len(sentences) == 3 * count


def test_attribute_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="one of: coco2014, nuswide, synthetic_voc, voc2007") as error:
        load_attributes("mlrsnet", CLASSES, TEMPLATE)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="no list of attribute strings for class 'tree'"):
        load_attributes({"car": ["metal"], "storage tank": ["metal"]}, CLASSES, TEMPLATE)
    with pytest.raises(ConfigError, match="for class 'car'"):
        load_attributes({"car": [], "storage tank": ["x"], "tree": ["y"]}, CLASSES, TEMPLATE)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_attributes(str(broken), CLASSES, TEMPLATE)
    listed = tmp_path / "listed.json"
    listed.write_text('["car"]')
    with pytest.raises(ConfigError, match="holds list; expected a JSON object"):
        load_attributes(str(listed), CLASSES, TEMPLATE)


def test_describe_on_vit_b16_counts_the_prompt_former():
    # the count does not depend on the attribute text: without VOC2007 on disk the class names are
    # placeholders, which no attribute file names
    counts = describe(load_configs("experiments/multilabel_voc_heterogeneity_fedmvp.yaml", ["head.attributes=null"])[0])
    width, embed = 768, 512
    projection = embed * width + width
    norms = 3 * 2 * width
    attention = 3 * width * width + 3 * width + width * width + width
    feedforward = width * 8 * width + 8 * width + 4 * width * width + width
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == \
        projection + norms + attention + feedforward == 9_845_760
    assert counts["private_parameters"] == 0 and counts["classes"] == 20


def test_a_round_of_training_is_the_same_batched_and_sequential(tiny_backbone):
    assert_multilabel_round_batched_equals_sequential("fedmvp", {"feedforward_mult": 1}, tiny_backbone)
