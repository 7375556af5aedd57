"""FedRSCLIP: shared and private prompts with two alignment constraints (papers/fedrsclip.txt).

Prompts (Eq. 4): h learnable vectors around the class token, ``[V]_1..[V]_{h/2} [CLASS]
[V]_{h/2+1}..[V]_h``. The dual prompt mechanism (DPM, Sec. IV-D) gives each client a *shared*
prompt s_g (FedAvg, Eq. 6) and a *private* prompt s_p,i that never leaves it; the prediction uses
both (Eq. 7). Trained with

    L = CE(Eq. 8, with the logits of Eq. 15 or Eq. 5) + dpac_weight * L_DPAC (Eq. 9)

* **CMFAC** (Eq. 11-15, ``cmfac: true``): entropic OT between the M patch features and the
  prompts' text features of each class, cost 1 - cos (Eq. 11), constraint set T 1 <= a,
  T^T 1 = b (Eq. 13; a = 1/M, b = rho/N), plan by generalised Sinkhorn iterations from v(0) = 1
  (Eq. 14), fixed while the prompts are optimised. Logits (Eq. 15) (1 - d_OT)/tau with
  tau = 1/logit_scale, computed as logit_scale * sum(T * cos): the two differ by the same
  constant for every class (see :func:`fedvlm.ot.ot_similarity`). Without CMFAC the logits are
  Eq. 5's logit_scale * cos(image, text), averaged over the prompts (Eq. 7 with both prompts).
* **DPAC** (Eq. 9-10, ``dpac: true``): for client i,

      L_DPAC = log(1 + sum_{j != i} exp(s * phi(E_Tp,i)^T psi(E_Ts,j) - s * phi(E_Tp,i)^T psi(E_Ts)))

  E_Tp,i: text features of the private prompt; E_Ts,j: of the shared prompts *other* clients
  uploaded, taken from what the server received in the previous round
  (``RoundContext.previous_uploads``, minus the client's own upload); E_Ts: "the global shared
  prompt features", read two ways (``dpac_anchor``): ``global`` (default) the aggregated shared
  prompt the client received this round, a constant like the negatives, so DPAC moves only the
  private prompt; ``local`` the shared prompt the client is training (it starts the round as the
  global one) with gradients into both prompts ("updates both the shared prompt and the private
  prompt"). The ``local`` reading also pushes each client's shared prompt away from the others'
  (they are the negatives), which pulls the aggregated prompt apart (measured in
  docs/results/single_label.md). Only shared prompts travel,
  which the server sees anyway; no private prompt or data leaves a client. In round 1, with one
  client (centralized) or without aggregation there are no other clients and L_DPAC = 0.
  Features are [C, D] per prompt (one per class); phi(E)^T psi(E') is read as the mean over
  classes of <phi(e_c), psi(e'_c)> with phi, psi followed by L2 normalisation, i.e. a mean
  cosine: ``dpac_map: identity`` (fedvlm's default) uses no map, ``linear`` learns private D x D
  maps phi and psi, initialised to the identity. Eq. 10 sums Eq. 9 over clients; each client
  minimises its own term.

Ablations (Tables V-VII): ``prompts: single`` (SPM: the shared prompt alone, no DPAC possible),
``dpac: false``, ``cmfac: false``. Not stated in the paper (fedvlm's choices, documented here):
the scale s (10), the DPAC weight (1), rho (0.8, FedOTP's), eps (0.1) and the OT iterations.
``global_model``: the server model is the aggregated shared prompt with the private prompt at its
initial value (``initial_private``) or the shared prompt standing in for the private one
(``shared_only``); the paper reports per-client accuracy (``personalized/mean_accuracy``).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from pydantic import Field

from fedvlm.batch import per_slot
from fedvlm.heads.base import Batch, Head, HeadConfig, RoundContext, normalize, slot_mean
from fedvlm.heads.fedotp import transport_similarity
from fedvlm.heads.prompts import PromptLayout, context_init
from fedvlm.heads.registry import HEADS


class FedRSCLIPConfig(HeadConfig):
    n_ctx: int = Field(4, gt=0)  # h in Eq. 4: 4 x 512 = 2,048 transmitted on ViT-B-16
    ctx_init: str | None = None
    class_token_position: Literal["end", "middle", "front"] = "middle"  # Eq. 4
    prompts: Literal["dual", "single"] = "dual"  # DPM or SPM (Table V)
    dpac: bool = True  # Dual Prompt Alignment Constraint (Table VI)
    dpac_scale: float = Field(10.0, gt=0)  # s in Eq. 9
    dpac_weight: float = Field(1.0, ge=0)
    dpac_map: Literal["identity", "linear"] = "identity"  # phi and psi
    dpac_anchor: Literal["global", "local"] = "global"  # E_Ts: this round's global prompt, or the local copy
    cmfac: bool = True  # Cross-Modal Feature Alignment Constraint (Table VII)
    mass: float = Field(0.8, gt=0, le=1)  # |b| = rho < |a| = 1 in Eq. 13
    eps: float = Field(0.1, gt=0)  # lambda in Eq. 12
    ot_max_iter: int = Field(100, gt=0)
    ot_tol: float = Field(0.0, ge=0)  # 0: always ot_max_iter iterations (batch-independent plans)
    global_model: Literal["initial_private", "shared_only"] = "initial_private"


def alignment_loss(private: torch.Tensor, shared: torch.Tensor, others: torch.Tensor, scale: float,
                   keep: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 9: log(1 + sum_j exp(s * sim(p, s_j) - s * sim(p, s_g))), for any batch of clients.

    private, shared: ``[..., C, D]`` (mapped and normalised features), others ``[..., J, C, D]``
    (leading dims broadcast: one ``[J, C, D]`` serves every client); keep ``[..., J]`` (bool,
    None: all) says which others count; sim(x, y) = mean over classes of <x_c, y_c>. -> ``[...]``;
    no other client kept gives 0.
    """
    classes = private.shape[-2]
    positive = (private * shared).sum(-1).mean(-1)  # [...]
    negatives = torch.einsum("...cd,...jcd->...j", private, others) / classes  # [..., J]
    exponents = scale * (negatives - positive.unsqueeze(-1))
    if keep is not None:
        exponents = exponents.masked_fill(~keep, float("-inf"))
    # log(1 + sum exp) as logsumexp over [0, exponents]: finite, with finite gradients, when nothing is kept
    return torch.logsumexp(torch.cat([exponents.new_zeros(*exponents.shape[:-1], 1), exponents], dim=-1), dim=-1)


@HEADS.register("fedrsclip")
class FedRSCLIPHead(Head):
    Config = FedRSCLIPConfig
    inputs = frozenset({"image", "patches"})
    needs_previous_uploads = True

    def __init__(self, config: FedRSCLIPConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, config.class_token_position)
        init = lambda: context_init(backbone, config.n_ctx, config.ctx_init, self.generator)  # noqa: E731
        self.shared_context = self.slot_parameter(init())  # s_g: [S, n_ctx, d_t]
        private = []
        if config.prompts == "dual":
            self.private_context = self.slot_parameter(init())  # s_p,i: [S, n_ctx, d_t]
            private.append("private_context")
            if config.dpac and config.dpac_map == "linear":
                identity = torch.eye(backbone.embed_dim)
                self.phi = self.slot_parameter(identity)  # [S, D, D]
                self.psi = self.slot_parameter(identity)
                private += ["phi", "psi"]
        self.private = tuple(private)
        self.uses_dpac = config.prompts == "dual" and config.dpac
        self.needs_previous_uploads = self.uses_dpac  # the server keeps last round's uploads only for DPAC
        # client id in each slot (-1: unknown), and the clients whose last uploads are the negatives
        self.register_buffer("slot_clients", torch.full((num_slots,), -1), persistent=False)  # [S]
        self.register_buffer("other_clients", torch.zeros(0, dtype=torch.long), persistent=False)  # [K]
        self.register_buffer("other_features", torch.zeros(0, len(classnames), backbone.embed_dim), persistent=False)
        self.register_buffer("global_features", torch.zeros(0, backbone.embed_dim), persistent=False)  # [C, D]

    # ------------------------------------------------------------------------------ text

    def contexts(self, slots: torch.Tensor) -> torch.Tensor:
        """``[U, N, n_ctx, d_t]``: the shared then (DPM) the private prompt of each slot."""
        parts = [self.shared_context[slots]]
        if self.config.prompts == "dual":
            parts.append(self.private_context[slots])
        return torch.stack(parts, dim=1)

    def text_features(self, slots: torch.Tensor) -> torch.Tensor:
        """Normalised text features ``[U, N, C, D]`` (N = 2 for DPM: shared, private)."""
        contexts = self.contexts(slots)  # [U, N, n_ctx, d_t]
        # Every (slot, prompt) pair is one context for the text encoder.
        features = self.layout.encode(self.backbone, rearrange(contexts, "u n l d -> (u n) l d"))
        return normalize(rearrange(features, "(u n) c d -> u n c d", u=contexts.shape[0]))

    def logits(self, batch: Batch, text: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        config = self.config
        if config.cmfac:  # Eq. 11-15
            similarity = transport_similarity(normalize(batch.patches), text[position].transpose(1, 2), partial=True,
                                              eps=config.eps, mass=config.mass, max_iter=config.ot_max_iter,
                                              tol=config.ot_tol)
        else:  # Eq. 5, both prompts (Eq. 7)
            similarity = torch.einsum("bd,bncd->bc", normalize(batch.image), text[position]) / text.shape[1]
        return self.backbone.logit_scale * similarity

    def forward(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        return self.logits(batch, self.text_features(slots), position)

    # ---------------------------------------------------------------------------- DPAC

    def begin_round(self, context: RoundContext) -> None:
        """Encode, once per round, the shared prompts the server received last round and the global
        shared prompt sent this round (constants of DPAC)."""
        others = sorted(context.previous_uploads) if self.uses_dpac else []
        device = self.shared_context.device
        self.other_clients = torch.tensor(others, dtype=torch.long, device=device)
        if not others:
            self.other_features = self.other_features.new_zeros(0, *self.other_features.shape[1:])
            return
        with torch.no_grad():
            contexts = torch.stack([context.previous_uploads[k]["shared_context"] for k in others])
            self.other_features = normalize(self.layout.encode(self.backbone, contexts.to(device)))  # [K, C, D]
            if self.config.dpac_anchor == "global":
                received = context.global_shared["shared_context"].to(device).unsqueeze(0)
                self.global_features = normalize(self.layout.encode(self.backbone, received))[0]  # [C, D]

    def begin_pass(self, clients: list[int]) -> None:
        self.slot_clients = torch.full_like(self.slot_clients, -1)
        self.slot_clients[: len(clients)] = torch.as_tensor(clients, dtype=torch.long)

    def _mapped(self, features: torch.Tensor, slots: torch.Tensor, name: str) -> torch.Tensor:
        """features ``[U, ..., C, D]`` through each unit's own map (phi or psi), then normalised."""
        if self.config.dpac_map == "linear":
            maps = getattr(self, name)[slots]  # [U, D, D]
            features = features @ per_slot(maps, features)
        return normalize(features)

    def dpac_loss(self, text: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Eq. 9 for every slot in ``slots`` -> ``[U]``. text: ``[U, 2, C, D]``.

        Each slot's negatives are the other clients' uploads: its own client's is masked out."""
        units = slots.shape[0]
        anchor = self.global_features.expand(units, -1, -1) if self.config.dpac_anchor == "global" else text[:, 0]
        others = self.other_features  # [K, C, D], normalised in begin_round
        if self.config.dpac_map == "linear":
            others = self._mapped(others.expand(units, -1, -1, -1), slots, "psi")  # [U, K, C, D]
        keep = self.other_clients.unsqueeze(0) != self.slot_clients[slots].unsqueeze(1)  # [U, K]
        return alignment_loss(self._mapped(text[:, 1], slots, "phi"), self._mapped(anchor, slots, "psi"), others,
                              self.config.dpac_scale, keep)

    def training_loss(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        text = self.text_features(slots)
        loss = slot_mean(self.sample_loss(self.logits(batch, text, position), batch.labels), batch.slot, self.num_slots)
        if self.uses_dpac and self.config.dpac_weight and len(self.other_clients):
            loss = loss.index_add(0, slots, self.config.dpac_weight * self.dpac_loss(text, slots))
        return loss

    def server_model(self, initial, global_shared):
        state = super().server_model(initial, global_shared)
        if self.config.global_model == "shared_only" and self.config.prompts == "dual":
            state["private_context"] = global_shared["shared_context"].clone()
        return state
