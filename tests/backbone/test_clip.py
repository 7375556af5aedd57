import subprocess
import sys

import pytest
import torch

from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.errors import ConfigError

TEXTS = ["a photo of a cat.", "an aerial photo of a dense residential area with many buildings and roads.", "x"]


def test_text_path_from_embeddings_equals_encode_text(tiny_backbone):
    ids = tiny_backbone.tokenize(TEXTS)
    reference = tiny_backbone.model.encode_text(ids)
    ours = tiny_backbone.encode_token_embeddings(tiny_backbone.token_embeddings(ids), tiny_backbone.eot_positions(ids))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_trimming_after_the_eot_token_changes_nothing(tiny_backbone):
    ids = tiny_backbone.tokenize(TEXTS)
    embeddings, eot = tiny_backbone.token_embeddings(ids), tiny_backbone.eot_positions(ids)
    trimmed = tiny_backbone.encode_token_embeddings(embeddings, eot)
    tiny_backbone.can_trim_text = False
    try:
        full = tiny_backbone.encode_token_embeddings(embeddings, eot)
    finally:
        tiny_backbone.can_trim_text = True
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)


def test_image_features_pooled_and_projected_patches(tiny_backbone):
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    features = tiny_backbone.encode_images(pixels, patches=True)
    assert features.pooled.shape == (3, tiny_backbone.embed_dim)
    assert features.patches.shape == (3, 64, tiny_backbone.embed_dim)  # 64 px / patch 8 = 8 x 8 patches
    torch.testing.assert_close(features.pooled, tiny_backbone.model.encode_image(pixels))
    assert tiny_backbone.encode_images(pixels).patches is None
    assert tiny_backbone.model.visual.output_tokens is False  # restored after the call


def test_backbone_is_frozen_and_stays_in_eval_mode(tiny_backbone):
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    tiny_backbone.train()
    assert not tiny_backbone.model.training
    context = torch.zeros(1, 4, tiny_backbone.text_width, requires_grad=True)
    ids = tiny_backbone.tokenize(["X X X X cat."])
    embeddings = torch.cat([tiny_backbone.token_embeddings(ids)[:, :1], context,
                            tiny_backbone.token_embeddings(ids)[:, 5:]], dim=1)
    tiny_backbone.encode_token_embeddings(embeddings, tiny_backbone.eot_positions(ids)).sum().backward()
    assert context.grad is not None and context.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.parameters())


def test_missing_checkpoint_and_unknown_names_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint file .*does not exist"):
        FrozenCLIP.load("fedvlm-tiny", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-Q-99'"):
        FrozenCLIP.load("ViT-Q-99", None)
    with pytest.raises(ConfigError, match="not an open_clip tag of ViT-B-16"):
        FrozenCLIP.load("ViT-B-16", "no-such-tag")


def test_local_checkpoint_loads(tmp_path, tiny_backbone):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_backbone.model.state_dict(), path)
    loaded = FrozenCLIP.load("fedvlm-tiny", str(path))
    for (name, a), (_, b) in zip(tiny_backbone.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.identity() != tiny_backbone.identity()  # weights are part of the cache key


def test_missing_tag_offline_fails_at_once_with_a_local_checkpoint_hint(tmp_path):
    # A fresh process without HF_HUB_OFFLINE and no network: fedvlm must switch the hub client to
    # offline itself instead of letting it retry for a minute.
    code = ("import fedvlm, time; from fedvlm.backbone.clip import FrozenCLIP; from fedvlm.errors import ConfigError\n"
            "t = time.time()\ntry:\n    FrozenCLIP.load('ViT-B-32', 'openai')\nexcept ConfigError as e:\n"
            "    import os; print('ERR', e); print('OFFLINE', os.environ.get('HF_HUB_OFFLINE'))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_HOME"] = str(tmp_path / "hf")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("ERR")]
    assert lines, out.stdout + out.stderr
    assert "model.pretrained=/path/to/" in lines[0]
    assert "OFFLINE 1" in out.stdout  # the hub client was switched off instead of retrying


def test_openai_tags_build_quick_gelu_and_key_the_cache_apart():
    # The path an `openai` run takes, with random weights in place of the download: the tag's
    # pretrained config decides the activation, and the identity (the feature-cache key) says it.
    from open_clip.transformer import QuickGELU

    openai = FrozenCLIP.load("ViT-B-16", "openai", load_weights=False)
    laion = FrozenCLIP.load("ViT-B-16", "laion2b_s34b_b88k", load_weights=False)
    openai_mlps = [block.mlp.gelu for block in [*openai.model.visual.transformer.resblocks,
                                                 *openai.model.transformer.resblocks]]
    laion_mlps = [block.mlp.gelu for block in [*laion.model.visual.transformer.resblocks,
                                                *laion.model.transformer.resblocks]]
    assert len(openai_mlps) == 24 and all(isinstance(m, QuickGELU) for m in openai_mlps)  # both towers
    assert all(type(m) is torch.nn.GELU for m in laion_mlps)
    assert (openai.activation, laion.activation) == ("quick_gelu", "gelu")
    assert openai.pretrained is None and laion.pretrained is None  # random weights: never keyed as the tag's
    assert openai.identity() != laion.identity()


def test_activation_decision_follows_the_tag_config_and_files_follow_the_model_config(tmp_path):
    from fedvlm.backbone.clip import uses_quick_gelu

    assert uses_quick_gelu("ViT-B-16", "openai") and uses_quick_gelu("ViT-B-32", "openai")
    assert uses_quick_gelu("ViT-B-16", "dfn2b")  # not only OpenAI's: any tag whose config declares it
    assert not uses_quick_gelu("ViT-B-16", "laion2b_s34b_b88k")
    assert not uses_quick_gelu("ViT-B-16", None)
    assert not uses_quick_gelu("ViT-B-16", str(tmp_path / "openai.safetensors"))  # a file says nothing...
    from_file = FrozenCLIP.load("ViT-B-16-quickgelu", str(tmp_path / "openai.safetensors"), load_weights=False)
    assert from_file.activation == "quick_gelu"  # ...so OpenAI weights from a file take the -quickgelu name


def test_the_same_weights_under_the_other_activation_are_another_identity(tiny_backbone):
    import open_clip

    quick = open_clip.create_model("fedvlm-tiny", force_quick_gelu=True)
    quick.load_state_dict(tiny_backbone.model.state_dict())  # QuickGELU has no parameters: same weights
    quick_backbone = FrozenCLIP(quick, tiny_backbone.preprocess, "fedvlm-tiny", None)
    assert (tiny_backbone.activation, quick_backbone.activation) == ("gelu", "quick_gelu")
    assert quick_backbone.identity() != tiny_backbone.identity()
    again = FrozenCLIP(tiny_backbone.model, tiny_backbone.preprocess, "fedvlm-tiny", None)
    assert again.identity() == tiny_backbone.identity()  # the key is stable for the same build


def test_compile_is_a_no_op_on_cpu_and_in_place_when_asked():
    backbone = FrozenCLIP.load("fedvlm-tiny", None)  # its own: compiling is in place
    ids = backbone.tokenize(TEXTS)
    embeddings, eot = backbone.token_embeddings(ids), backbone.eot_positions(ids)
    eager = backbone.encode_token_embeddings(embeddings, eot)
    keys, identity = list(backbone.state_dict()), backbone.identity()
    assert backbone.compile() is backbone and not backbone.compiled  # CPU: runtime.compile does nothing
    # The compiled path itself, on CPU with the eager backend (no C++ toolchain needed): the same
    # module tree, state-dict keys and identity, the same numbers, and a second call changes nothing.
    backbone.compile(backend="eager", on_cpu=True)
    assert backbone.compiled and list(backbone.state_dict()) == keys and backbone.identity() == identity
    assert backbone.text_tower.transformer.resblocks is not None  # the shared-prefix path still reads it
    compiled_call = backbone.text_tower.transformer._compiled_call_impl
    backbone.compile(backend="eager", on_cpu=True)
    assert backbone.text_tower.transformer._compiled_call_impl is compiled_call
    torch.testing.assert_close(backbone.encode_token_embeddings(embeddings, eot), eager)
    torch.testing.assert_close(backbone.encode_text(TEXTS), backbone.model.encode_text(ids), atol=1e-5, rtol=1e-5)


def test_random_weights_are_one_fixed_draw_whatever_the_rng_holds():
    """The feature caches key a model without weights as ("random", seed): every load must give the
    same tensors, and loading must leave the caller's random stream where it was. (A Trainer test
    that seeded differently once filled the session's memory cache with other features under the
    same key, and a later run in the process read them.)"""
    torch.manual_seed(1)
    first = FrozenCLIP.load("fedvlm-tiny", None)
    after_first = torch.rand(3)
    torch.manual_seed(1)
    torch.rand(5)  # another state
    second = FrozenCLIP.load("fedvlm-tiny", None)
    assert first.identity() == second.identity()
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after_first)  # loading drew nothing from the global stream
