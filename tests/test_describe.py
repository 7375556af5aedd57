"""``fedvlm describe`` on the full-size ViT-B-16 architecture (random weights, no download)."""

import pytest

from fedvlm.cli import main
from fedvlm.config import load_config
from fedvlm.describe import describe

VIT_B_16_PARAMETERS = 149_620_737  # open_clip ViT-B-16: visual 86.19 M + text 63.43 M + logit scale


@pytest.fixture(scope="module")
def fedavg_pl():
    return describe(load_config("experiments/fedavg_pl_ucm.yaml"))


def test_prompt_methods_transmit_2048_parameters_on_vit_b16(fedavg_pl):
    assert fedavg_pl["frozen_parameters"] == VIT_B_16_PARAMETERS
    assert fedavg_pl["trainable_parameters"] == fedavg_pl["transmitted_parameters"] == 2048  # 4 x 512
    assert fedavg_pl["total_parameters"] == VIT_B_16_PARAMETERS + 2048
    assert fedavg_pl["private_parameters"] == 0
    assert fedavg_pl["bytes_per_round"] == 2 * 10 * 2048 * 4  # 10 clients, up and down, fp32


def test_no_transmission_without_aggregation(capsys):
    assert main(["describe", "experiments/centralized_ucm.yaml", "--json"]) == 0
    assert '"transmitted_parameters": 0' in capsys.readouterr().out
    counts = describe(load_config("experiments/fedprox_ucm.yaml", ["head.class_specific_context=true"]))
    assert counts["transmitted_parameters"] == 21 * 2048  # one context per UCMerced class
