"""Caption batches: sentence structure, caption choice per view, evaluation with every caption."""

import numpy as np
import torch

from fedvlm.backbone.text_cache import CaptionFeatures
from fedvlm.inputs.captions import CaptionBatches, sentence_end_ids, sentence_structure

PERIOD = 269


def test_sentences_split_after_end_punctuation_with_eot_in_the_last():
    #          SOT   a   car   .   two  trees  EOT
    ids = torch.tensor([[49406, 320, 1615, PERIOD, 1237, 3346, 49407, 0],
                        #  SOT  cars   .    EOT  (a final period does not open an empty sentence)
                        [49406, 3346, PERIOD, 49407, 0, 0, 0, 0]])
    eot = torch.tensor([6, 3])
    word_index, word_count, sentence_count = sentence_structure(ids, eot, {PERIOD})
    assert sentence_count.tolist() == [2, 1]
    assert word_count.tolist() == [[3, 3], [3, 0]]
    assert word_index[0, 0, :3].tolist() == [1, 2, 3] and word_index[0, 1, :3].tolist() == [4, 5, 6]
    assert word_index[1, 0, :3].tolist() == [1, 2, 3] and (word_index[1, 1] == -1).all()


def test_sentence_end_ids_of_the_clip_tokenizer(tiny_backbone):
    assert PERIOD in sentence_end_ids(tiny_backbone)


class _Images:
    def batch(self, rows, slot, train=True, views=None):
        from fedvlm.batch import Batch

        rows = torch.as_tensor(np.asarray(rows))
        return Batch(labels=rows, slot=torch.as_tensor(np.asarray(slot)), image=rows.float().unsqueeze(1))


def test_training_draws_one_caption_per_image_by_view_and_evaluation_gets_them_all():
    features = CaptionFeatures(pooled=torch.arange(5.0).unsqueeze(1).repeat(1, 2), token_ids=torch.zeros(5, 3),
                               eot=torch.ones(5, dtype=torch.long))
    data = CaptionBatches(_Images(), features, [np.array([0, 1, 2]), np.array([3]), np.array([4])], "cpu")
    assert data.num_views == 3 and data.captions_per_image == 3
    train = data.batch(np.array([0, 1, 2]), np.zeros(3), train=True, views=np.array([4, 2, 0]))
    assert train.extras["caption_index"].tolist() == [[1], [3], [4]]  # view mod caption count
    assert train.extras["caption_pooled"][:, 0, 0].tolist() == [1.0, 3.0, 4.0]
    test = data.batch(np.array([0, 1]), np.zeros(2), train=False)
    assert test.extras["caption_valid"].tolist() == [[True, True, True], [True, False, False]]
    assert test.extras["caption_pooled"][1, 1:].abs().sum() == 0


def test_every_caption_of_an_image_is_equally_likely_when_caption_counts_differ():
    features = CaptionFeatures(pooled=torch.zeros(5, 2), token_ids=torch.zeros(5, 3),
                               eot=torch.ones(5, dtype=torch.long))
    data = CaptionBatches(_Images(), features, [np.array([0, 1, 2]), np.array([3, 4])], "cpu")
    views = np.arange(data.num_views)  # train_pass draws views uniformly from range(num_views)
    for row, captions in ((0, [0, 1, 2]), (1, [3, 4])):
        chosen = data.caption_rows(np.full(len(views), row), train=True, views=views)[:, 0]
        counts = np.bincount(chosen, minlength=5)[captions]
        assert (counts == counts[0]).all(), (row, counts)
