"""The frozen open_clip CLIP every head sits on.

:class:`FrozenCLIP` loads any open_clip model (``ViT-B-16`` ...) or a tiny config shipped in
``fedvlm/backbone/model_configs``, with weights from an open_clip tag, a local checkpoint file or
none. It exposes exactly what prompt and adapter heads need:

* ``encode_images(pixels) -> ImageFeatures(pooled [B, D], patches [B, M, D])``: the projected
  pooled embedding and the projected patch tokens (open_clip returns patch tokens after
  ``ln_post`` but unprojected; we multiply by ``visual.proj`` as the pooled path does);
* ``token_embeddings(token_ids) -> [N, L, d_t]`` and ``encode_token_embeddings(embeddings,
  eot_positions) -> [N, D]``: the text tower fed with token *embeddings*, so learnable context
  vectors can be spliced in (CoOp). Equal to ``encode_text`` when the embeddings are the real ones;
* deep prompts (MaPLe, OTDPP): ``encode_deep_prompted_text`` replaces the prompt positions before
  each of the first J text blocks, ``encode_prompted_images`` appends per-sample prompt tokens to
  the patch sequence and replaces them before each of the first J vision blocks (with gradients).

Encoders stay in eval mode with ``requires_grad=False``; gradients flow *through* the text tower
to spliced-in prompts, never into it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from fedvlm.backbone.shared_prefix import run_blocks_with_shared_prefix, supports_shared_prefix
from fedvlm.errors import ConfigError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


@dataclass
class ImageFeatures:
    pooled: torch.Tensor  # [B, D] projected, not normalised
    patches: torch.Tensor | None  # [B, M, D] projected patch tokens, not normalised


@functools.lru_cache(maxsize=1)
def register_fedvlm_model_configs() -> None:
    """Make the tiny configs shipped with fedvlm known to open_clip (once per process)."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)


@functools.lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _use_offline_hub_if_unreachable() -> None:
    """Without a network the hub client retries for about a minute before failing; when the hub
    cannot be reached (and the user did not choose a mode), switch it to offline so a missing
    tag fails at once, while weights already in the local cache still load."""
    if "HF_HUB_OFFLINE" in os.environ or _hub_reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True


# The torch seed of every random-weight build (pretrained: null); part of its weights identity.
RANDOM_WEIGHTS_SEED = 0


def weights_identity(pretrained: str | None) -> str:
    """A short string that changes whenever the weights change (for feature-cache keys)."""
    if pretrained is None:
        return f"random:{RANDOM_WEIGHTS_SEED}"
    path = Path(pretrained)
    if path.is_file():
        stat = path.stat()
        return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"tag:{pretrained}"


# fedvlm's own weight tags: tag -> (model it belongs to, pretraining recipe of fedvlm.backbone.pretrain_tiny)
FEDVLM_TAGS = {"synthetic": ("fedvlm-tiny", "v2"), "synthetic-v1": ("fedvlm-tiny", "v1")}


def resolve_pretrained(name: str, pretrained: str | None) -> str | None:
    """Turn fedvlm's own tags into checkpoint paths: ``synthetic`` is the tiny CLIP pretrained on
    the synthetic world with patch-level alignment (recipe v2), ``synthetic-v1`` the first one
    (pooled alignment only); both shipped in fedvlm/backbone/checkpoints (docs/SYNTHETIC_WORLD.md,
    docs/WORLD.md)."""
    if pretrained not in FEDVLM_TAGS:
        return pretrained
    model, recipe = FEDVLM_TAGS[pretrained]
    if name != model:
        raise ConfigError(f"model.pretrained: {pretrained!r} holds weights of {model}, not {name}")
    from fedvlm.backbone.pretrain_tiny import tiny_checkpoint_path

    return str(tiny_checkpoint_path(recipe=recipe))


def uses_quick_gelu(name: str, pretrained: str | None) -> bool:
    """Whether the weights ``pretrained`` names were trained with QuickGELU (``x * sigmoid(1.702 x)``).

    OpenAI trained CLIP with QuickGELU; open_clip's configs of the same architectures (``ViT-B-16``)
    build exact GELU, and say which of their tags need QuickGELU in the tag's pretrained config
    (``quick_gelu``; every ``openai`` tag, and e.g. ``dfn2b`` and ``metaclip_*``). Running such
    weights with exact GELU moves the features (0.7 % image, 1.8 % text with identical random
    weights; more on the real ones). A checkpoint file carries no such record: its activation is
    the model config's, so OpenAI weights from a file need ``ViT-B-16-quickgelu`` (README, "Model
    weights").
    """
    if pretrained is None or pretrained in FEDVLM_TAGS or _is_checkpoint_path(pretrained):
        return False
    import open_clip

    return bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))


def activation_of(model: nn.Module) -> str:
    """``quick_gelu`` or ``gelu``: the transformer activation a built open_clip model uses."""
    from open_clip.transformer import QuickGELU

    return "quick_gelu" if any(isinstance(module, QuickGELU) for module in model.modules()) else "gelu"


def _is_checkpoint_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


def create_clip(name: str, pretrained: str | None, device: str | torch.device = "cpu", load_weights: bool = True):
    """``(model, preprocess)`` for an open_clip model name and a tag, checkpoint path or None.

    The architecture follows the weights (:func:`uses_quick_gelu`). ``load_weights=False`` builds
    that same architecture with random weights and reads nothing from disk or the hub
    (``fedvlm describe``; tests of the openai architecture without its download).
    Errors a user can fix (unknown model, missing file, tag unavailable offline) are one line.
    """
    import open_clip

    register_fedvlm_model_configs()
    known = set(open_clip.list_models())
    if name not in known and not name.startswith(("hf-hub:", "local-dir:")):
        raise ConfigError(f"model.name: unknown open_clip model {name!r}; expected e.g. ViT-B-16, ViT-B-32, "
                          f"ViT-L-14 or a fedvlm tiny config ({', '.join(sorted(p.stem for p in MODEL_CONFIG_DIR.glob('*.json')))})")
    is_path = pretrained is not None and _is_checkpoint_path(pretrained)
    if is_path and load_weights and not Path(pretrained).is_file():
        raise ConfigError(f"model.pretrained: checkpoint file {pretrained} does not exist; expected a local open_clip "
                          "checkpoint (.pt, .bin or .safetensors) or an open_clip tag such as 'openai'")
    if pretrained is not None and not is_path:
        tags = open_clip.list_pretrained_tags_by_model(name) + [t for t, (m, _) in FEDVLM_TAGS.items() if m == name]
        if pretrained not in tags:
            raise ConfigError(f"model.pretrained: {pretrained!r} is not an open_clip tag of {name}; expected one of "
                              f"{', '.join(tags) or '(none: give a checkpoint path)'}, a checkpoint path, or null")
        if load_weights:
            _use_offline_hub_if_unreachable()
    quick_gelu = uses_quick_gelu(name, pretrained)
    try:
        # Random weights (pretrained: null) are a fixed draw, not whatever the caller's torch RNG holds:
        # the feature caches key them by identity ("random", RANDOM_WEIGHTS_SEED), so every load of
        # a model without weights must give the same tensors; and loading consumes none of the
        # caller's random stream.
        with _quiet_root_logger(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained if load_weights else None, force_quick_gelu=quick_gelu, device=device)
    except RuntimeError as error:
        if pretrained is not None and not is_path and "download" in str(error).lower():
            # A file holds no activation: name the -quickgelu config when the tag's weights need it.
            file_model = f"{name}-quickgelu" if quick_gelu and f"{name}-quickgelu" in known else name
            raise ConfigError(
                f"model.pretrained: the {pretrained!r} weights of {name} are not in the local cache and the hub "
                f"cannot be reached; download them on a connected machine (open_clip.create_model('{name}', "
                f"pretrained='{pretrained}')) and set model.name={file_model} "
                f"model.pretrained=/path/to/open_clip_model.safetensors"
            ) from None
        raise
    except (OSError, ValueError, KeyError) as error:
        if is_path:
            raise ConfigError(f"model.pretrained: cannot load checkpoint {pretrained} into {name} "
                              f"({type(error).__name__}: {str(error).splitlines()[0][:160]})") from None
        raise
    return model, preprocess


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def _text_tower(model: nn.Module) -> nn.Module:
    """The module holding token_embedding/transformer/ln_final (CLIP keeps them at top level,
    CustomTextCLIP under ``.text``)."""
    tower = getattr(model, "text", model)
    for attribute in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
        if not hasattr(tower, attribute):
            raise ConfigError(f"model.name: the text tower of this model has no {attribute}; prompt heads need "
                              "an open_clip CLIP text transformer (e.g. ViT-B-16)")
    return tower


class FrozenCLIP(nn.Module):
    """A frozen open_clip model with the embedding-level text path prompt learning needs."""

    def __init__(self, model: nn.Module, preprocess, name: str, pretrained: str | None, precision: str = "fp32"):
        super().__init__()
        self.model = model.eval()
        self.model.requires_grad_(False)
        self._text_memo: dict[str, torch.Tensor] | None = None  # see reuse_text
        self.preprocess = preprocess
        self.name = name
        self.pretrained = pretrained
        self.precision = precision
        self.activation = activation_of(model)
        self.text_tower = _text_tower(model)
        visual = model.visual
        self.has_patch_tokens = hasattr(visual, "output_tokens") and getattr(visual, "proj", None) is not None
        self.embed_dim = int(model.text_projection.shape[-1]) if hasattr(model, "text_projection") and \
            model.text_projection is not None and not isinstance(model.text_projection, nn.Linear) else \
            int(visual.output_dim)
        self.text_width = int(self.text_tower.token_embedding.weight.shape[-1])
        self.context_length = int(self.text_tower.positional_embedding.shape[0])
        self.image_size = _image_size(visual)
        # Reading the output at the EOT token of a causal transformer means positions after it
        # cannot change the result, so prompts can be cut at their longest EOT (77 -> ~20 tokens).
        mask = getattr(self.text_tower, "attn_mask", None)
        pool = getattr(self.text_tower, "text_pool_type", "argmax")
        self.can_trim_text = mask is not None and pool in ("argmax", "eos")
        # Prompts that share their first tokens run those once (see fedvlm.backbone.shared_prefix);
        # settable so benchmarks and tests can compare with the full path.
        self.share_text_prefix = self.can_trim_text and supports_shared_prefix(self.text_tower.transformer.resblocks)
        import open_clip

        self.tokenizer = open_clip.get_tokenizer(name) if name in open_clip.list_models() else open_clip.tokenize

    @classmethod
    def load(cls, name: str, pretrained: str | None, precision: str = "fp32", device="cpu",
             load_weights: bool = True) -> "FrozenCLIP":
        """The backbone of ``model.name`` and ``model.pretrained``; ``load_weights=False``: the same
        architecture (activation included) with random weights, whose identity says so."""
        pretrained = resolve_pretrained(name, pretrained)
        model, preprocess = create_clip(name, pretrained, device=device, load_weights=load_weights)
        return cls(model, preprocess, name, pretrained if load_weights else None, precision)

    def train(self, mode: bool = True):  # the backbone never leaves eval mode
        super().train(False)
        return self

    def compile(self, *, dynamic: bool = True, backend: str = "inductor", on_cpu: bool = False) -> "FrozenCLIP":
        """``torch.compile`` the frozen text transformer in place (``runtime.compile``); returns self.

        The text transformer is what every prompt head runs each step (the image side is cached);
        ``dynamic=True`` because prompt lengths are trimmed to the batch's longest EOT, so the
        sequence length changes between calls. The module is compiled in place
        (:meth:`torch.nn.Module.compile`): its parameters, state-dict keys, ``resblocks`` (read
        by the shared-prefix and deep-prompt paths, which stay eager) and :meth:`identity` are
        unchanged. On a CPU backbone this is a no-op unless ``on_cpu``: compile time there
        outweighs the gain for the short runs CPUs are used for. Compiling twice is a no-op.
        """
        transformer = self.text_tower.transformer
        on_gpu = self.text_tower.token_embedding.weight.device.type == "cuda"
        if (on_gpu or on_cpu) and not self.compiled:
            transformer.compile(dynamic=dynamic, backend=backend)
        return self

    @property
    def compiled(self) -> bool:
        """Whether the text transformer runs compiled."""
        return getattr(self.text_tower.transformer, "_compiled_call_impl", None) is not None

    # ---------------------------------------------------------------- identity (cache keys)

    def identity(self) -> str:
        """Model, activation, weights and preprocessing: everything image features depend on. The
        activation is read from the built modules, so a cache made with GELU is never served to
        the QuickGELU build of the same name and tag (or back)."""
        text = (f"{self.name}|{self.activation}|{weights_identity(self.pretrained)}|{self.precision}|"
                f"{self.preprocess}")
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().detach()

    def _autocast(self, device: torch.device):
        enabled = self.precision != "fp32" and device.type != "cpu"
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)

    # ---------------------------------------------------------------------------- images

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, patches: bool = False) -> ImageFeatures:
        """``pixels [B, 3, H, W]`` -> pooled ``[B, D]`` (+ projected patch tokens ``[B, M, D]``)."""
        visual = self.model.visual
        with self._autocast(pixels.device):
            if not patches:
                return ImageFeatures(visual(pixels).float(), None)
            if not self.has_patch_tokens:
                raise ConfigError(f"model.name: {self.name} does not expose patch tokens; heads that use patch "
                                  "features need a ViT image tower")
            visual.output_tokens = True
            try:
                pooled, tokens = visual(pixels)
            finally:
                visual.output_tokens = False
            return ImageFeatures(pooled.float(), (tokens @ visual.proj).float())

    # ------------------------------------------------------------------------------ text

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``[N, context_length]`` token ids."""
        return self.tokenizer(texts)

    def eot_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Index of the token the text tower reads its output at (the EOT token)."""
        eos = getattr(self.text_tower, "text_eos_id", None)
        if getattr(self.text_tower, "text_pool_type", "argmax") == "eos" and eos is not None:
            return (token_ids == eos).int().argmax(dim=-1)
        return token_ids.argmax(dim=-1)

    def token_embeddings(self, token_ids: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` ids -> ``[N, L, d_t]`` word embeddings (no positions)."""
        with torch.no_grad():
            return self.text_tower.token_embedding(token_ids.to(self.text_tower.token_embedding.weight.device))

    @contextlib.contextmanager
    def reuse_text(self):
        """Within this block (and without gradients) a text forward whose inputs are byte for byte
        those of an earlier one returns the earlier features instead of running the encoder again.
        Evaluation scores every test batch with the same prompts, and heads encode them per batch;
        the key is the inputs' content, so it can never return the features of other prompts."""
        previous, self._text_memo = self._text_memo, {}
        try:
            yield
        finally:
            self._text_memo = previous

    def _reused(self, inputs: tuple, compute) -> torch.Tensor:
        if self._text_memo is None or torch.is_grad_enabled():
            return compute()
        digest = hashlib.blake2b(digest_size=16)
        for tensor in inputs:
            if tensor is not None:
                tensor = tensor.detach().contiguous()
                digest.update(repr((tuple(tensor.shape), tensor.dtype)).encode())
                digest.update(tensor.cpu().view(torch.uint8).numpy().tobytes())
        key = digest.hexdigest()
        if key not in self._text_memo:
            self._text_memo[key] = compute()
        return self._text_memo[key]

    def _text_length(self, length: int, eot_positions: torch.Tensor) -> int:
        """Sequence length to run: cut after the longest EOT where the causal mask makes the padding
        unable to change anything before it (``can_trim_text``)."""
        return int(eot_positions.max()) + 1 if self.can_trim_text else length

    def _text_input(self, embeddings: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Word embeddings ``[..., L, d_t]`` at positions ``start .. start + L - 1`` -> the
        transformer's input (cast, positions added) and its attention mask cut to L."""
        tower, length = self.text_tower, embeddings.shape[-2]
        cast = tower.transformer.get_cast_dtype() if hasattr(tower.transformer, "get_cast_dtype") else embeddings.dtype
        x = embeddings.to(cast) + tower.positional_embedding[start : start + length].to(cast)
        mask = getattr(tower, "attn_mask", None)
        return x, (mask[:length, :length] if mask is not None else None)

    def encode_token_embeddings(self, embeddings: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        """``embeddings [N, L, d_t]`` (learnable context spliced in) -> text features ``[N, D]``.

        Same computation as open_clip's ``encode_text`` after its token-embedding lookup: add
        positions, causal transformer (batch-first), ``ln_final``, read the EOT position,
        project. Sequences are cut after the longest EOT when that cannot change the output.
        """
        return self._reused((embeddings, eot_positions),
                            lambda: self._encode_token_embeddings(embeddings, eot_positions))

    def _encode_token_embeddings(self, embeddings: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        tower = self.text_tower
        length = self._text_length(embeddings.shape[1], eot_positions)
        x, mask = self._text_input(embeddings[:, :length])
        with self._autocast(x.device):
            x = tower.transformer(x, attn_mask=mask)
            x = _text_output(tower, x, eot_positions)
        return x.float()

    def encode_with_shared_prefix(self, prefix: torch.Tensor, suffix: torch.Tensor, eot_positions: torch.Tensor,
                                  layer_prompts: torch.Tensor | None = None,
                                  prompt_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Text features of U x C prompts where the C prompts of unit u all start with
        ``prefix[u]``: ``prefix [U, P, d_t]``, ``suffix [U, C, S, d_t]`` (the rest of each prompt),
        ``eot_positions [C]`` or ``[U, C]`` (in the whole prompt, at least P) -> ``[U, C, D]``.
        Equal to :meth:`encode_token_embeddings` on the concatenated prompts, or with deep
        prompts (``layer_prompts [U, J - 1, n_ctx, d_t]`` at the prefix positions
        ``prompt_positions [n_ctx]``) to :meth:`encode_deep_prompted_text`; the prefix runs once
        per unit instead of once per prompt (``fedvlm.backbone.shared_prefix``). Needs
        ``share_text_prefix``."""
        return self._reused((prefix, suffix, eot_positions, layer_prompts, prompt_positions),
                            lambda: self._encode_with_shared_prefix(prefix, suffix, eot_positions, layer_prompts,
                                                                    prompt_positions))

    def _encode_with_shared_prefix(self, prefix: torch.Tensor, suffix: torch.Tensor, eot_positions: torch.Tensor,
                                   layer_prompts: torch.Tensor | None, prompt_positions: torch.Tensor | None
                                   ) -> torch.Tensor:
        tower, units, classes, length_p = self.text_tower, suffix.shape[0], suffix.shape[1], prefix.shape[1]
        if not self.share_text_prefix or int(eot_positions.min()) < length_p:
            raise ValueError("encode_with_shared_prefix: needs a causal text tower and every EOT after the prefix")
        eot_positions = rearrange(eot_positions.expand(units, classes), "u c -> (u c)")
        length_s = self._text_length(length_p + suffix.shape[2], eot_positions) - length_p
        x_p, _ = self._text_input(prefix)
        x_s, _ = self._text_input(suffix[:, :, :length_s], start=length_p)
        with self._autocast(x_p.device):
            x = run_blocks_with_shared_prefix(tower.transformer.resblocks, x_p, x_s, layer_prompts,
                                              prompt_positions).flatten(0, 1)
            x = _text_output(tower, x, eot_positions - length_p)
        return rearrange(x.float(), "(u c) d -> u c d", u=units)

    def encode_deep_prompted_text(self, embeddings: torch.Tensor, eot_positions: torch.Tensor,
                                  layer_prompts: torch.Tensor | None = None,
                                  prompt_index: torch.Tensor | None = None, first_layer: int = 1) -> torch.Tensor:
        """Text features with prompts injected into the first J blocks (MaPLe; OTDPP Sec. 3.4).

        ``embeddings [N, L, d_t]`` already carry the first block's prompts (spliced in as for
        :meth:`encode_token_embeddings`). Before block j (1 <= j < J) the tokens at the prompt
        positions are *replaced* by ``layer_prompts[:, j - 1]`` (``[N, J - 1, P, d_t]``): the
        previous block's outputs at those positions are discarded, as in MaPLe
        (REFERENCE-NOTES item 6). ``prompt_index [N, L]`` says which prompt token sits at each
        position (-1: a frozen token), like ``PromptLayout.context_index``. Blocks run
        batch-first, as open_clip 3.x builds them (REFERENCE-NOTES item 5). With no layer
        prompts this is :meth:`encode_token_embeddings`. ``first_layer`` moves the injections to
        blocks ``first_layer .. first_layer + J - 2`` (TCP replaces the context before one middle
        block only: ``J - 1 = 1``, ``first_layer = 8``). -> ``[N, D]``.
        """
        return self._reused((embeddings, eot_positions, layer_prompts, prompt_index, torch.tensor([first_layer])),
                            lambda: self._encode_deep_prompted_text(embeddings, eot_positions, layer_prompts,
                                                                    prompt_index, first_layer))

    def _encode_deep_prompted_text(self, embeddings: torch.Tensor, eot_positions: torch.Tensor,
                                   layer_prompts: torch.Tensor | None, prompt_index: torch.Tensor | None,
                                   first_layer: int = 1) -> torch.Tensor:
        tower = self.text_tower
        length = self._text_length(embeddings.shape[1], eot_positions)
        prompt_index = prompt_index[:, :length] if prompt_index is not None else None
        x, mask = self._text_input(embeddings[:, :length])
        depth = 1 + (layer_prompts.shape[1] if layer_prompts is not None else 0)
        if depth > 1:
            is_prompt = prompt_index.ge(0).unsqueeze(-1)  # [N, L, 1]
            gather_index = prompt_index.clamp(min=0).unsqueeze(-1).expand(-1, -1, x.shape[-1])  # [N, L, d_t]
        batch_first = getattr(tower.transformer, "batch_first", True)
        with self._autocast(x.device):
            for j, block in enumerate(tower.transformer.resblocks):
                if first_layer <= j < first_layer + depth - 1:
                    injected = torch.gather(layer_prompts[:, j - first_layer].to(x.dtype), 1, gather_index)
                    x = torch.where(is_prompt, injected, x)
                x = _run_block(block, x, mask, batch_first)
            x = _text_output(tower, x, eot_positions)
        return x.float()

    def encode_prompted_images(self, pixels: torch.Tensor, prompts: torch.Tensor | None = None) -> ImageFeatures:
        """Image features with prompt tokens in the first J blocks of the vision transformer, with
        gradients (MaPLe's vision branch; OTDPP Eq. 5).

        ``pixels [B, 3, H, W]``; ``prompts [B, J, P, d_v]`` (each sample its own, e.g. its
        client's). ``prompts[:, 0]`` is appended after the positional embedding, before
        ``ln_pre``; before block j (1 <= j < J) the last P tokens are replaced by
        ``prompts[:, j]``. The prompt tokens are dropped before pooling, so the patch tokens are
        the image's own M. -> pooled ``[B, D]`` and projected patch tokens ``[B, M, D]``. With no
        prompts (None or P = 0) this equals :meth:`encode_images` (with gradients).
        """
        visual = self.model.visual
        if not self.has_patch_tokens:
            raise ConfigError(f"model.name: {self.name} has no ViT image tower; deep visual prompts need one")
        count = prompts.shape[2] if prompts is not None else 0
        batch_first = getattr(visual.transformer, "batch_first", True)
        with self._autocast(pixels.device):
            x = visual._embeds(pixels)  # patches + class token + positions, then ln_pre (per token)
            if count:
                # ln_pre normalises each token on its own, so appending after it equals MaPLe's
                # appending before it.
                x = torch.cat([x, visual.ln_pre(prompts[:, 0].to(x.dtype))], dim=1)
            for j, block in enumerate(visual.transformer.resblocks):
                if count and 1 <= j < prompts.shape[1]:
                    x = torch.cat([x[:, :-count], prompts[:, j].to(x.dtype)], dim=1)
                x = _run_block(block, x, None, batch_first)
            if count:
                x = x[:, :-count]
            pooled, tokens = visual._pool(x)
            if visual.proj is not None:
                pooled, tokens = pooled @ visual.proj, tokens @ visual.proj
        return ImageFeatures(pooled.float(), tokens.float())

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Fixed texts -> ``[N, D]`` (class names of zero-shot heads, captions)."""
        device = self.text_tower.token_embedding.weight.device
        outputs = []
        for start in range(0, len(texts), batch_size):
            ids = self.tokenize(texts[start : start + batch_size]).to(device)
            outputs.append(self.encode_token_embeddings(self.token_embeddings(ids), self.eot_positions(ids)))
        return torch.cat(outputs) if outputs else torch.zeros(0, self.embed_dim)

    @torch.no_grad()
    def encode_text_tokens(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token's output of the text tower, projected into the joint space: ``token_ids
        [N, L]`` -> (``[N, L', D]``, ``eot [N]``) with L' cut after the longest EOT. Row
        ``eot[n]`` of caption n is its ``encode_text`` feature; the rows before it are the word
        features that token-level adapters read (RDB's Text Semantic Adapter). Positions after a
        caption's EOT are padding (the causal mask keeps them from changing anything before)."""
        tower = self.text_tower
        device = tower.token_embedding.weight.device
        token_ids = token_ids.to(device)
        eot = self.eot_positions(token_ids)
        length = self._text_length(token_ids.shape[1], eot)
        x, mask = self._text_input(self.token_embeddings(token_ids[:, :length]))
        with self._autocast(x.device):
            x = tower.ln_final(tower.transformer(x, attn_mask=mask))
            projection = tower.text_projection
            if projection is not None:
                x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return x.float(), eot

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _image_size(visual: nn.Module) -> int:
    size = getattr(visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _text_output(tower: nn.Module, x: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
    """The text embedding read at each sequence's end-of-text token: final norm, EOT row, projection."""
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot_positions.to(x.device)]
    projection = tower.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
    return x


def _run_block(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, batch_first: bool) -> torch.Tensor:
    """One open_clip residual attention block on a batch-first ``x [N, L, d]``."""
    if batch_first:
        return block(x, attn_mask=mask)
    return block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
