"""SCPNet (Ding et al., CVPR 2023, "Exploring Structured Semantic Prior for Multi Label Recognition
with Incomplete Labels"; code jameslahm/SCPNet): CoOp prompts whose class text features are
refined by a graph convolution over a label-to-label prior taken from CLIP itself (the "Fed-SCPNet"
baseline of FedMPT Tables 1-3, trained with ASL and FedAvg as FedMPT Sec. 5 prescribes).

**Structured semantic prior** (computed once from the frozen text encoder; :func:`label_similarity`,
:func:`prior_matrices`). With t_c = encode_text(template.format(class c)), normalised::

    S[i, j]   = max(cos(t_i, t_j), 0)                                  label-to-label similarity
    S'        = S with every entry outside row i's top-k (sparse_topk = 20) set to 0, S'[i, i] = 0
    A[i, j]   = p * S'[i, j] / sum_j S'[i, j]  (i != j),  A[i, i] = 1 - p       (p = reweight_p = 0.2)
    R[i, :]   = softmax over row i's top-k entries of A[i, :] / T            (T = 0.3; 0 elsewhere)

A is the adjacency of the semantic association module (the GCN), R the prior that calibrates
the self-supervised targets; both as the authors' ``SCPNet.__init__`` builds them from their
shipped ``relation+<dataset>.npy``.

**Prediction** (the authors' ``SCPNet.forward``). Per client (slot), with prompt features
T0 = [t_c(ctx)]_c ``[C, D]`` from the learnable context (n_ctx = 4, from "a photo of a")::

    H1 = leaky(A T0 W1),  H2 = leaky(A H1 W2),  H3 = A H2 W3          (D -> 2048 -> 2048 -> D, no bias, slope 0.2)
    t~ = normalise(H3 + T0)
    logit[b, c] = scale * cos(image_b, t~_c)                             (scale = 10, the VOC config's)

**Loss** per sample (FedMPT: ASL replaces the method's supervised loss, the SPLC of the code)::

    L = ASL(logit, y) + lambda_u * L_cons,   p = sigmoid(logit) detached,  q = sigmoid(logit)
    r = p R^T                                                           (the prior-calibrated target)
    m = [max of the top-hard_k entries of p >= p_cutoff]                  (a confident sample)
    y^ = 1 at the top-hard_k classes with p >= p_cutoff, and at every labelled positive; else 0
    L_cons = -m * sum_c [ BCE(q, y^) + kl_lambda * BCE(q, r) ]           (BCE(q, y) = y log q + (1-y) log(1-q), negated)

lambda_u = 0.125, kl_lambda = 2, hard_k = 5, p_cutoff = 0.95 (configs/scpnet+voc.yaml).

Choices where the paper or code leave it open, or where fedvlm differs:

- The prior's similarity: the code loads ``relation+<dataset>.npy`` without the script that wrote
  it; fedvlm computes it as the cosine of CLIP's text embeddings of the prompted class names (the
  paper's "label-to-label correspondence" from CLIP's text encoder), clamped at 0 so that the row
  normalisation yields a distribution. ``prior_template`` picks the prompt (null: the dataset's).
- Weak and strong views: the code's consistency loss compares a weakly and a RandAugment-strongly
  augmented view of each image. fedvlm's heads read cached features (one view), so both branches
  see the same forward: the target side is detached, the loss is self-training of confident
  samples towards their pseudo-labels and the prior-calibrated targets r.
- The class-wise threshold: the code scales p_cutoff by FlexMatch's per-class learning status
  acc_c / (2 - acc_c), a count of pseudo-labels over the whole training set kept by the trainer.
  fedvlm uses acc_c = 1 (a learned class: the threshold is p_cutoff), which needs no per-dataset
  state the federated loop would have to keep per client.
- The code fine-tunes CLIP's image encoder too (only ``text_encoder`` is frozen) and evaluates an
  EMA of the model; in fedvlm both encoders are frozen and the trained parameters are evaluated,
  the learnable modules FedMPT's "Fed-" baselines average: the context and the GCN.
- The GCN's width: the code hardwires RN50's 1024 -> 2048 -> 2048 -> 1024; fedvlm keeps the hidden
  width 2048 (``gcn_hidden``) on any embedding width D. Its weights start U(-1/sqrt(out),
  1/sqrt(out)) as in the code (``GraphConvolution.reset_parameters``).

Everything is shared (FedAvg). On ViT-B/16 (D = d_t = 512): 4 x 512 context + 512 x 2048 + 2048 x
2048 + 2048 x 512 GCN = 6,293,504 parameters (FedMPT's Table 5 gives no count for Fed-SCPNet).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from fedvlm.heads.base import Batch, Head, HeadConfig, normalize, slot_mean
from fedvlm.heads.prompts import PromptLayout, context_init
from fedvlm.heads.registry import HEADS


def label_similarity(text_features: torch.Tensor) -> torch.Tensor:
    """The label-to-label similarity ``S [C, C]``: cosines of the class text features ``[C, D]``,
    clamped at 0 (the prior is a weighting; a negative cosine says "unrelated", not "negative")."""
    text = normalize(text_features)
    return (text @ text.T).clamp(min=0)


def prior_matrices(similarity: torch.Tensor, sparse_topk: int, reweight_p: float, temperature: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The GCN adjacency ``A`` and the calibration prior ``R`` (both ``[C, C]``, rows summing to 1)
    from a similarity ``[C, C]`` (see the module docstring; the authors' ``SCPNet.__init__``)."""
    classes = similarity.shape[0]
    kept = torch.zeros_like(similarity, dtype=torch.bool)
    kept.scatter_(1, similarity.topk(min(sparse_topk, classes), dim=1).indices, True)
    diagonal = torch.eye(classes, dtype=torch.bool, device=similarity.device)
    sparse = torch.where(kept & ~diagonal, similarity, torch.zeros_like(similarity))
    # a class with no related class (C = 1, or every kept cosine 0) keeps only its own mass
    rows = sparse.sum(1, keepdim=True)
    adjacency = torch.where(rows > 0, sparse / rows.clamp(min=torch.finfo(sparse.dtype).tiny), sparse) * reweight_p
    adjacency = torch.where(diagonal, torch.full_like(adjacency, 1 - reweight_p), adjacency)
    logits = torch.where(kept, adjacency / temperature, torch.full_like(adjacency, float("-inf")))
    return adjacency, torch.softmax(logits, dim=1)


def graph_refine(text: torch.Tensor, adjacency: torch.Tensor, weights: list[torch.Tensor],
                 slope: float) -> torch.Tensor:
    """The semantic association module: ``text [U, C, D]``, ``adjacency [C, C]``, per-slot layer
    weights ``[U, in, out]`` -> ``[U, C, D]``, the GCN's output plus the input (unnormalised)."""
    hidden = text
    for index, weight in enumerate(weights):
        hidden = adjacency @ (hidden @ weight)
        if index < len(weights) - 1:
            hidden = F.leaky_relu(hidden, slope)
    return hidden + text


def prior_consistency_loss(logits: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor, hard_k: int,
                           p_cutoff: float, kl_lambda: float) -> torch.Tensor:
    """SCPNet's prior-enhanced self-supervised loss per sample ``[B]`` (the module docstring's
    L_cons): ``logits [B, C]``, ``labels [B, C]`` in {1, 0, -1}, ``prior R [C, C]``."""
    target = torch.sigmoid(logits.detach())
    calibrated = target @ prior.T  # r[b, i] = sum_j p[b, j] R[i, j]
    top_probs, top_index = target.topk(min(hard_k, target.shape[1]), dim=1)
    confident = top_probs.ge(p_cutoff).any(dim=1).to(logits.dtype)  # [B]
    pseudo = torch.zeros_like(target).scatter(1, top_index, 1.0)
    pseudo = torch.where(target < p_cutoff, torch.zeros_like(pseudo), pseudo)
    pseudo = torch.where(labels == 1, torch.ones_like(pseudo), pseudo)
    floor = math.log(1e-8)  # the code clamps the probabilities at 1e-8 before the log
    log_q, log_not_q = F.logsigmoid(logits).clamp(min=floor), F.logsigmoid(-logits).clamp(min=floor)
    pseudo_term = pseudo * log_q + (1 - pseudo) * log_not_q
    prior_term = calibrated * log_q + (1 - calibrated) * log_not_q
    return -confident * (pseudo_term + kl_lambda * prior_term).sum(dim=1)


class SCPNetConfig(HeadConfig):
    n_ctx: int = Field(4, gt=0)  # configs/scpnet+voc.yaml
    ctx_init: str | None = "a photo of a"
    prior_template: str | None = None  # the prompt the prior encodes the class names with; null: the dataset's
    sparse_topk: int = Field(20, gt=0)
    reweight_p: float = Field(0.2, ge=0, le=1)
    prior_temperature: float = Field(0.3, gt=0)  # the code's T
    gcn_hidden: int = Field(2048, gt=0)
    gcn_slope: float = Field(0.2, ge=0)  # LeakyReLU(0.2)
    logit_scale: float | None = Field(10.0, gt=0)  # the code's "scale: 10"; null: the backbone's logit scale
    lambda_u: float = Field(0.125, ge=0)  # weight of the self-supervised loss (0: ASL only)
    kl_lambda: float = Field(2.0, ge=0)  # weight of the prior-calibrated term inside it
    hard_k: int = Field(5, gt=0)
    p_cutoff: float = Field(0.95, gt=0, le=1)


@HEADS.register("scpnet")
class SCPNetHead(Head):
    Config = SCPNetConfig

    def __init__(self, config: SCPNetConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, "end")
        self.context = self.slot_parameter(context_init(backbone, config.n_ctx, config.ctx_init, self.generator))
        prompt = config.prior_template or template
        with torch.no_grad():
            similarity = label_similarity(backbone.encode_text([prompt.format(c) for c in classnames]).float())
        adjacency, prior = prior_matrices(similarity, config.sparse_topk, config.reweight_p, config.prior_temperature)
        self.register_buffer("adjacency", adjacency, persistent=False)
        self.register_buffer("prior", prior, persistent=False)
        width, hidden = backbone.embed_dim, config.gcn_hidden
        for index, (fan_in, fan_out) in enumerate([(width, hidden), (hidden, hidden), (hidden, width)], start=1):
            bound = fan_out ** -0.5
            initial = (torch.rand(fan_in, fan_out, generator=self.generator) * 2 - 1) * bound
            setattr(self, f"gcn_weight{index}", self.slot_parameter(initial))  # [S, in, out]
        self.scale = float(config.logit_scale) if config.logit_scale is not None else float(backbone.logit_scale)

    def text_features(self, slots: torch.Tensor) -> torch.Tensor:
        """The prior-refined, normalised class text features of the given slots ``[U, C, D]``."""
        prompts = self.layout.encode(self.backbone, self.context[slots])
        weights = [self.gcn_weight1[slots], self.gcn_weight2[slots], self.gcn_weight3[slots]]
        return normalize(graph_refine(prompts, self.adjacency, weights, self.config.gcn_slope))

    def forward(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        text = self.text_features(slots)
        return self.scale * torch.einsum("bd,bcd->bc", normalize(batch.image), text[position])

    def training_loss(self, batch: Batch) -> torch.Tensor:
        logits = self(batch)
        loss = self.sample_loss(logits, batch.labels)
        config = self.config
        if batch.labels.dim() == 2 and config.lambda_u > 0:  # the prior loss is multi-label
            loss = loss + config.lambda_u * prior_consistency_loss(logits, batch.labels, self.prior, config.hard_k,
                                                                   config.p_cutoff, config.kl_lambda)
        return slot_mean(loss, batch.slot, self.num_slots)
