"""``fedvlm describe`` counts of the single-label prompt family (FedOTP, FedRSCLIP, OTDPP, MaPLe,
FedPGP, the full-model baseline) on the full-size ViT-B-16 architecture with random weights."""

import pytest

import fedvlm.describe
from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.config import load_configs
from fedvlm.describe import describe

VIT_B_16_IMAGE_ENCODER = 86_192_640  # open_clip ViT-B-16 visual tower, output projection included


@pytest.fixture(scope="module", autouse=True)
def one_vit_b16():
    """Build the ViT-B-16 backbone once for the module: describe() still builds every head."""
    built = {}

    class OnceCLIP(FrozenCLIP):
        @classmethod
        def load(cls, name, pretrained, precision="fp32", device="cpu", load_weights=True):
            if (name, pretrained) not in built:
                built[name, pretrained] = FrozenCLIP.load(name, pretrained, precision, device, load_weights)
            return built[name, pretrained]

    patch = pytest.MonkeyPatch()
    patch.setattr(fedvlm.describe, "FrozenCLIP", OnceCLIP)
    yield built
    patch.undo()


def _counts(path, *overrides):
    return describe(load_configs(path, list(overrides))[0])


@pytest.mark.parametrize("method", ["fedavg_pl", "fedprox", "fedotp", "fedrsclip"])
def test_fedrsic_prompt_methods_transmit_2048_parameters(method):
    counts = _counts(f"experiments/fedrsic/optimal31/{method}.yaml")
    assert counts["model"] == "ViT-B-16" and counts["classes"] == 31
    assert counts["transmitted_parameters"] == 2048  # 4 x 512 (FedRSCLIP Table II, "2K")
    dual = method in ("fedotp", "fedrsclip")
    assert counts["trainable_parameters"] == (4096 if dual else 2048)
    assert counts["private_parameters"] == (2048 if dual else 0)


def test_fedrsclip_single_prompt_ablation_has_nothing_private():
    counts = _counts("experiments/fedrsic/optimal31/fedrsclip_spm.yaml")
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == 2048


def test_otdpp_context_2_4_512_is_4096_trainable_2048_transmitted():
    counts = _counts("experiments/otdpp/otdpp.yaml")
    assert counts["trainable_parameters"] == 4096 and counts["transmitted_parameters"] == 2048
    assert counts["private_parameters"] == 2048
    # 0.004752% of the image encoder, the ratio the paper prints (Sec. 4.6)
    assert round(100 * 4096 / VIT_B_16_IMAGE_ENCODER, 6) == 0.004752
    split = _counts("experiments/otdpp/otdpp.yaml", "head.split=prompts")
    assert (split["trainable_parameters"], split["transmitted_parameters"]) == (4096, 2048)


def test_maple_depth_9_with_2_context_tokens():
    counts = _counts("experiments/otdpp/maple.yaml")
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == 3_555_072


def test_fedpgp_shares_sigma_and_keeps_the_low_rank_part():
    counts = _counts("experiments/otdpp/fedpgp.yaml")
    assert counts["transmitted_parameters"] == 16 * 512  # sigma
    assert counts["private_parameters"] == 16 * 4 + 4 * 512  # U, V


def test_full_model_baseline_transmits_the_image_encoder_and_the_classifier():
    counts = _counts("experiments/fedrsic/optimal31/full_model.yaml")
    assert counts["transmitted_parameters"] == VIT_B_16_IMAGE_ENCODER + 31 * 513  # 86.21 M
    assert counts["private_parameters"] == 0
    runs = load_configs("experiments/fedrsic/optimal31/full_model.yaml")
    assert [r.partition.num_clients for r in runs] == [1, 2, 5, 10, 15, 20, 40]  # Centralized + Table II
    assert all(r.runtime.clients_per_pass == 1 for r in runs)  # one encoder copy per pass
