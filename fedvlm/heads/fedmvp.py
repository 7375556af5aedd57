"""FedMVP (Singha et al., ICCV 2025, "FedMVP: Federated Multi-modal Visual Prompt Tuning for
Vision-Language Models"; code mainaksingha01/FedMVP): visual prompts generated from each image's
patch embeddings and the classes' attribute text by a cross-attention "PromptFormer", fed to the
frozen image encoder (the "FedMVP" rows of FedMPT Tables 1-3, trained with ASL and FedAvg).

**Attribute text** (:func:`load_attributes`). Each class c has attributes a_{c,1..A_c} (written by
an LLM in the paper; fedvlm ships hand-written files, ``fedvlm/heads/conditions/<name>_attributes.json``).
Sentence s_{c,k} = "<template with class c, no final period>, which has <a_{c,k}>" (the code's
``load_gpt_descriptions``: "which is" after an article or "used", "which" before has / often /
typically / may / can). e_{c,k} = normalise(encode_text(s_{c,k})) ``[T, D]``, T = sum_c A_c.

**PromptFormer** (the code's ``CrossAttention`` + ``PromptLearner``), per client, for image b with
patch embeddings x_b ``[M, d_v]`` (conv1 + positional embedding, before ``ln_pre``)::

    ctx      = e W_t + b_t                                    [T, d_v]   (Linear(D -> d_v))
    q, k, v  = LN_q(x_b) W_q,  LN_c(ctx) W_k,  ctx W_v        (+ biases; the value is not normalised:
                                                               the code's PreNorm normalises query and key only)
    h        = MultiHead_4(q, k, v) W_o + b_o                  [M, d_v]
    z        = h + FF(h),  FF(h) = GEGLU(LN_f(h) W_1 + b_1) W_2 + b_2   (d_v -> 2 x 4 d_v -> d_v)
    p_b      = AdaptiveAvgPool over the M patches of z to P = 4 tokens      [P, d_v]

**Prediction.** The P prompts are appended to the image's tokens before ``ln_pre`` and the frozen
encoder runs (``FrozenCLIP.encode_prompted_images``, depth 1): f_b = normalise(pooled embedding)::

    logit[b, c] = logit_scale * mean over k of cos(f_b, e_{c,k})       (the code's aggregate_similarity 'mean')

**Loss** per sample: ASL(logit, y) + alpha * (1 - cos(f_b, f0_b)), alpha = 10 (``TRAIN.ALPHA``),
f0_b the frozen encoder's own pooled embedding of the image (the consistency loss; FedMPT Sec. 5
replaces the code's cross-entropy by ASL).

Choices and differences from the code, each on purpose:

- f0 is the cached embedding of the image itself; the code encodes a randomly flipped copy (no
  augmented views reach a head, and a random flip per step would make batched and sequential
  training draw differently).
- The code switches each client to LoRA factors on the PromptFormer (rank 8, frozen
  cross-attention) once a client's last local loss falls below 0.5, a per-client state change
  mid-training; fedvlm trains the PromptFormer throughout and has no LoRA factors.
- The descriptor sentences: the code's test ``startswith('a')`` also matches words such as
  "antenna"; fedvlm tests for the article as a word. Without an attribute file
  (``attributes: null``) each class's single "attribute" sentence is its prompt
  ``template.format(class)``.
- Classes may have different numbers of attributes (the code stacks them and needs equal counts).
- Initialisation follows torch's defaults for the code's modules (Linear: U(+-1/sqrt(fan_in));
  MultiheadAttention: Xavier-uniform in-projection, zero biases; LayerNorm: 1, 0), drawn from the
  head's seed.

Everything is shared (FedAvg of the prompt learner, as the code's server does). On ViT-B/16
(D = 512, d_v = 768): Linear 393,984 + LayerNorms 4,608 + attention 2,362,368 + feed-forward
7,084,800 = 9,845,760 parameters. FedMPT's Table 5 reports 1.14 M for FedMVP; the public code's
PromptFormer at width 768 with a 4x GEGLU feed-forward is 9.85 M, and the papers do not say which
smaller configuration 1.14 M counts (docs/MULTILABEL.md, "Parameter counts").
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field

from fedvlm.errors import ConfigError, shown
from fedvlm.files import read_json
from fedvlm.heads.base import Batch, Head, HeadConfig, normalize, slot_mean
from fedvlm.heads.registry import HEADS

ATTRIBUTES_DIR = Path(__file__).parent / "conditions"
ATTRIBUTE_SUFFIX = "_attributes.json"
_VERB_STARTS = ("has", "often", "typically", "may", "can")


def descriptor_sentence(attribute: str) -> str:
    """The clause joining an attribute to its class (the code's ``make_descriptor_sentence``)."""
    first = attribute.split(" ", 1)[0].lower()
    if first in ("a", "an", "used"):
        return f"which is {attribute}"
    if first in _VERB_STARTS:
        return f"which {attribute}"
    return f"which has {attribute}"


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def load_attributes(source: str | dict[str, list[str]] | None, classnames: list[str], template: str
                    ) -> tuple[list[str], list[int]]:
    """The attribute sentences ``[T]`` and the class of each ``[T]``, from an attribute mapping
    ``{class name: [attribute, ...]}`` given inline, in a JSON file (a path, or the name of a file
    shipped as ``fedvlm/heads/conditions/<name>_attributes.json``; keys starting with '_' are
    comments), or none (each class's prompt). Class names match case-insensitively, '_' as ' '."""
    if source is None:
        return [template.format(name) for name in classnames], list(range(len(classnames)))
    if isinstance(source, str):
        path = Path(source)
        if not path.is_file():
            path = ATTRIBUTES_DIR / f"{source}{ATTRIBUTE_SUFFIX}"
        if not path.is_file():
            files = ATTRIBUTES_DIR.glob(f"*{ATTRIBUTE_SUFFIX}")
            shipped = ", ".join(sorted(p.name[: -len(ATTRIBUTE_SUFFIX)] for p in files))
            raise ConfigError(f"head.attributes: {shown(source)} is neither a file nor a shipped attribute set; "
                              f"expected a path, a mapping, or one of: {shipped}")
        expected = "a JSON object {class name: [attribute, ...]}"
        mapping = read_json(path, "head.attributes: attribute file", expected, ConfigError)
        if not isinstance(mapping, dict):
            raise ConfigError(f"head.attributes: attribute file {path} holds {type(mapping).__name__}; "
                              f"expected {expected}")
        where = f"attribute file {path}"
    else:
        mapping, where = source, "head.attributes"
    by_key = {_key(k): v for k, v in mapping.items() if not k.startswith("_")}
    sentences, classes = [], []
    for index, name in enumerate(classnames):
        attributes = by_key.get(_key(name))
        if not isinstance(attributes, list) or not attributes or not all(isinstance(a, str) and a.strip()
                                                                          for a in attributes):
            raise ConfigError(f"head.attributes: {where} has no list of attribute strings for class {name!r}; "
                              f"expected {{{name!r}: [\"attribute\", ...]}} for every class of the dataset")
        prefix = template.format(name).strip().rstrip(".")
        sentences += [f"{prefix}, {descriptor_sentence(a.strip())}" for a in attributes]
        classes += [index] * len(attributes)
    return sentences, classes


def patch_embeddings(backbone, pixels: torch.Tensor) -> torch.Tensor:
    """The ViT's patch tokens after the positional embedding, before ``ln_pre`` ``[B, M, d_v]``
    (what the code's ``ImageEncoder`` hands the PromptFormer); frozen, so without gradient."""
    visual = backbone.model.visual
    with torch.no_grad(), backbone._autocast(pixels.device):
        x = visual.conv1(pixels.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        x = x + visual.positional_embedding[1:].to(x.dtype)
    return x.float()


def geglu(x: torch.Tensor) -> torch.Tensor:
    values, gates = x.chunk(2, dim=-1)
    return values * F.gelu(gates)


def prompt_former(patches: torch.Tensor, context: torch.Tensor, p: dict[str, torch.Tensor], heads: int,
                  prompt_tokens: int) -> torch.Tensor:
    """One client's PromptFormer (module docstring): ``patches [b, M, d_v]``, projected attribute
    features ``context [T, d_v]``, that client's parameters ``p`` -> visual prompts ``[b, P, d_v]``."""
    width = patches.shape[-1]
    w_q, w_k, w_v = p["attention_in_weight"].chunk(3)
    b_q, b_k, b_v = p["attention_in_bias"].chunk(3)
    query = F.layer_norm(patches, (width,), p["query_norm_weight"], p["query_norm_bias"]) @ w_q.T + b_q
    key = F.layer_norm(context, (width,), p["context_norm_weight"], p["context_norm_bias"]) @ w_k.T + b_k
    value = context @ w_v.T + b_v
    split = lambda x: x.unflatten(-1, (heads, width // heads)).transpose(-3, -2)  # noqa: E731  [.., heads, n, d/h]
    attended = F.scaled_dot_product_attention(split(query), split(key).unsqueeze(0), split(value).unsqueeze(0))
    hidden = attended.transpose(-3, -2).flatten(-2) @ p["attention_out_weight"].T + p["attention_out_bias"]
    normed = F.layer_norm(hidden, (width,), p["feedforward_norm_weight"], p["feedforward_norm_bias"])
    hidden = hidden + geglu(normed @ p["feedforward_in_weight"].T + p["feedforward_in_bias"]) @ \
        p["feedforward_out_weight"].T + p["feedforward_out_bias"]
    return F.adaptive_avg_pool1d(hidden.transpose(1, 2), prompt_tokens).transpose(1, 2)


class FedMVPConfig(HeadConfig):
    # attribute set: a shipped name (voc2007, synthetic_voc), a JSON path, an inline mapping, or null
    attributes: str | dict[str, list[str]] | None = None
    prompt_tokens: int = Field(4, gt=0)  # the code's AdaptiveAvgPool1d(4)
    attention_heads: int = Field(4, gt=0)  # cross_heads = 4
    feedforward_mult: int = Field(4, gt=0)  # FeedForward(dim, mult=4), GEGLU
    consistency_weight: float = Field(10.0, ge=0)  # TRAIN.ALPHA


@HEADS.register("fedmvp")
class FedMVPHead(Head):
    Config = FedMVPConfig
    inputs = frozenset({"pixels"})

    def __init__(self, config: FedMVPConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        if not getattr(backbone, "has_patch_tokens", False):
            raise ConfigError(f"model.name: {backbone.name} has no ViT image tower; FedMVP's visual prompts need one")
        width, embed = int(backbone.model.visual.transformer.width), backbone.embed_dim
        if width % config.attention_heads:
            raise ConfigError(f"head.attention_heads: {config.attention_heads} does not divide the image tower's "
                              f"width {width}")
        sentences, classes = load_attributes(config.attributes, classnames, template)
        self.register_buffer("attribute_features", normalize(backbone.encode_text(sentences).float()), persistent=False)
        # class mean over attributes as one matrix: logits = sims @ averaging, averaging[t, c] = 1 / A_c
        averaging = F.one_hot(torch.tensor(classes), len(classnames)).float()
        self.register_buffer("averaging", averaging / averaging.sum(0, keepdim=True), persistent=False)
        hidden = config.feedforward_mult * width

        def linear(fan_in: int, *shape: int) -> torch.Tensor:  # nn.Linear's default U(+-1/sqrt(fan_in))
            return (torch.rand(*shape, generator=self.generator) * 2 - 1) / math.sqrt(fan_in)

        xavier = math.sqrt(6.0 / (width + 3 * width))  # nn.MultiheadAttention's in_proj: xavier_uniform on [3d, d]
        initial = {
            "text_projection_weight": linear(embed, width, embed), "text_projection_bias": linear(embed, width),
            "query_norm_weight": torch.ones(width), "query_norm_bias": torch.zeros(width),
            "context_norm_weight": torch.ones(width), "context_norm_bias": torch.zeros(width),
            "attention_in_weight": (torch.rand(3 * width, width, generator=self.generator) * 2 - 1) * xavier,
            "attention_in_bias": torch.zeros(3 * width),
            "attention_out_weight": linear(width, width, width), "attention_out_bias": torch.zeros(width),
            "feedforward_norm_weight": torch.ones(width), "feedforward_norm_bias": torch.zeros(width),
            "feedforward_in_weight": linear(width, 2 * hidden, width), "feedforward_in_bias": linear(width, 2 * hidden),
            "feedforward_out_weight": linear(hidden, width, hidden), "feedforward_out_bias": linear(hidden, width),
        }
        self.parameter_names = tuple(initial)
        for name, value in initial.items():
            setattr(self, name, self.slot_parameter(value))

    def visual_prompts(self, batch: Batch) -> torch.Tensor:
        """Every sample's prompts from its own slot's PromptFormer ``[B, P, d_v]``."""
        patches = patch_embeddings(self.backbone, batch.pixels)
        prompts, order = [], []
        for slot in batch.present_slot_ids():
            rows = torch.nonzero(batch.slot == slot).flatten()
            p = {name: getattr(self, name)[slot] for name in self.parameter_names}
            context = self.attribute_features @ p["text_projection_weight"].T + p["text_projection_bias"]
            prompts.append(prompt_former(patches[rows], context, p, self.config.attention_heads,
                                         self.config.prompt_tokens))
            order.append(rows)
        return torch.cat(prompts)[torch.argsort(torch.cat(order))]

    def image_features(self, batch: Batch) -> torch.Tensor:
        """The prompted, normalised pooled image embeddings ``[B, D]``."""
        prompts = self.visual_prompts(batch).unsqueeze(1)  # [B, 1, P, d_v]: appended before ln_pre, depth 1
        return normalize(self.backbone.encode_prompted_images(batch.pixels, prompts).pooled)

    def scores(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone.logit_scale * (image @ self.attribute_features.T) @ self.averaging

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.scores(self.image_features(batch))

    def training_loss(self, batch: Batch) -> torch.Tensor:
        image = self.image_features(batch)
        consistency = 1 - (image * normalize(batch.image.to(image.dtype))).sum(-1)  # [B]
        loss = self.sample_loss(self.scores(image), batch.labels) + self.config.consistency_weight * consistency
        return slot_mean(loss, batch.slot, self.num_slots)
