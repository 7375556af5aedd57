import pytest
import torch

from fedvlm.config import load_config
from fedvlm.heads import HEADS, Batch
from fedvlm.heads.coop import CoOpConfig, CoOpHead
from fedvlm.heads.prompts import PromptLayout

CLASSES = ["dense residential", "storage tank", "river", "x-ray machine"]


def _head(backbone, slots=1, **options):
    return CoOpHead(CoOpConfig(name="coop", **options), backbone, CLASSES, "a photo of a {}.", num_slots=slots, seed=0)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_context_equal_to_real_words_reproduces_encode_text(tiny_backbone, position):
    """CoOp's text path with the context set to the embeddings of real words must equal
    open_clip's encode_text of the written-out prompt."""
    words = ["a", "photo", "of", "a"]
    head = _head(tiny_backbone, n_ctx=4, class_token_position=position)
    with torch.no_grad():
        head.context[0] = tiny_backbone.token_embeddings(tiny_backbone.tokenize([" ".join(words)]))[0, 1:5]
    before = {"end": 4, "middle": 2, "front": 0}[position]
    prompts = [" ".join(words[:before] + [c] + words[before:]) + "." for c in CLASSES]
    expected = tiny_backbone.model.encode_text(tiny_backbone.tokenize(prompts))
    ours = head.layout.encode(tiny_backbone, head.context[:1])[0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_ctx_init_phrase_starts_from_its_word_embeddings(tiny_backbone):
    head = _head(tiny_backbone, n_ctx=4, ctx_init="a photo of a")
    expected = tiny_backbone.model.encode_text(tiny_backbone.tokenize([f"a photo of a {c}." for c in CLASSES]))
    torch.testing.assert_close(head.layout.encode(tiny_backbone, head.context[:1])[0], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match="is 4 tokens but head.n_ctx is 3"):
        _head(tiny_backbone, n_ctx=3, ctx_init="a photo of a")


def test_slots_are_independent_clients(tiny_backbone):
    """Two slots in one forward give each sample exactly what its own slot alone gives."""
    head = _head(tiny_backbone, slots=2, n_ctx=4)
    with torch.no_grad():
        head.context[1] += torch.randn_like(head.context[1]) * 0.1
    image = torch.randn(6, tiny_backbone.embed_dim, generator=torch.Generator().manual_seed(1))
    slot = torch.tensor([0, 1, 1, 0, 1, 0])
    together = head(Batch(labels=torch.zeros(6, dtype=torch.long), slot=slot, image=image))
    for s in (0, 1):
        alone = head(Batch(labels=torch.zeros(3, dtype=torch.long), slot=torch.full((3,), s), image=image[slot == s]))
        torch.testing.assert_close(together[slot == s], alone, atol=1e-5, rtol=1e-5)
    loss = head.training_loss(Batch(labels=torch.tensor([0, 1, 2, 3, 0, 1]), slot=slot, image=image))
    loss[0].backward()
    assert head.context.grad[0].abs().sum() > 0 and head.context.grad[1].abs().sum() == 0


def test_class_specific_context_and_parameter_counts(tiny_backbone):
    head = _head(tiny_backbone, n_ctx=4, class_specific_context=True)
    assert head.context.shape == (1, len(CLASSES), 4, tiny_backbone.text_width)
    assert head.parameters_per_client() == len(CLASSES) * 4 * tiny_backbone.text_width
    assert head.shared_names() == ["context"] and head.private_names() == []
    logits = head(Batch(labels=torch.zeros(2, dtype=torch.long), slot=torch.zeros(2, dtype=torch.long),
                        image=torch.randn(2, tiny_backbone.embed_dim)))
    assert logits.shape == (2, len(CLASSES))


def test_prompt_layout_marks_exactly_the_context_positions(tiny_backbone):
    layout = PromptLayout(tiny_backbone, CLASSES, n_ctx=4, position="middle")
    assert (layout.context_index >= 0).sum(1).tolist() == [4] * len(CLASSES)
    for row in layout.context_index:
        positions = torch.nonzero(row >= 0).flatten().tolist()
        assert positions[:2] == [1, 2] and row[positions].tolist() == [0, 1, 2, 3]


def test_zeroshot_head_uses_the_template_and_has_nothing_to_train(tiny_backbone):
    config = load_config(overrides=["name=z", "data.dataset=synthetic_scenes", "head.name=zeroshot"])
    head = HEADS.get("zeroshot")(config.head, tiny_backbone, CLASSES, "a photo of a {}.")
    assert head.trainable() == {}
    expected = torch.nn.functional.normalize(tiny_backbone.encode_text([f"a photo of a {c}." for c in CLASSES]), dim=-1)
    torch.testing.assert_close(head.class_features, expected)
