import pytest
import torch

from fedvlm.client.optim import SlotOptimizer
from fedvlm.config import OptimConfig


def _reference_run(config: OptimConfig, initial: torch.Tensor, grads: list[torch.Tensor], lr: float) -> torch.Tensor:
    param = torch.nn.Parameter(initial.clone())
    if config.name == "sgd":
        optimizer = torch.optim.SGD([param], lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW([param], lr=lr, betas=config.betas, weight_decay=config.weight_decay)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
    return param.detach()


@pytest.mark.parametrize("protocol", ["update", "torch"])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_each_slot_follows_torch_optim_exactly(name, protocol):
    """Three clients stacked in slots, with different learning rates and numbers of steps, end
    where torch.optim would take each of them alone: through ``update(grads, lr, active)`` and
    through the torch protocol (``.grad``, ``slot_rates``, ``active``, ``step()``)."""
    config = OptimConfig(name=name, momentum=0.9, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    initial = torch.randn(3, 5, 4, generator=g)
    grads = [torch.randn(3, 5, 4, generator=g) for _ in range(6)]
    lrs = torch.tensor([0.1, 0.05, 0.2])
    steps_of = [6, 2, 4]  # slot 1 runs out of data after 2 steps, slot 2 after 4
    param = torch.nn.Parameter(initial.clone())
    optimizer = SlotOptimizer({"w": param}, config)
    for t in range(6):
        active = torch.tensor([t < n for n in steps_of])
        if protocol == "update":
            optimizer.update({"w": grads[t]}, lrs, active)
        else:
            param.grad = grads[t].clone()
            optimizer.slot_rates, optimizer.active = lrs, active
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    assert isinstance(optimizer, torch.optim.Optimizer)
    for s in range(3):
        expected = _reference_run(config, initial[s], [g_[s] for g_ in grads[: steps_of[s]]], float(lrs[s]))
        torch.testing.assert_close(param.detach()[s], expected, atol=1e-6, rtol=1e-6)


def test_slot_state_round_trips_and_fresh_state_is_zero():
    param = torch.nn.Parameter(torch.zeros(2, 3))
    optimizer = SlotOptimizer({"w": param}, OptimConfig(name="sgd", momentum=0.9, weight_decay=0))
    optimizer.update({"w": torch.ones(2, 3)}, torch.ones(2), torch.tensor([True, True]))
    saved = optimizer.read_slot(0)
    assert torch.equal(saved["momentum/w"], torch.ones(3)) and saved["step"] == 1
    optimizer.write_slot(1, None)
    assert optimizer.read_slot(1)["momentum/w"].abs().sum() == 0
    optimizer.write_slot(1, saved)
    assert torch.equal(optimizer.read_slot(1)["momentum/w"], saved["momentum/w"])


def test_without_slot_rates_every_slot_takes_the_scheduled_group_rate_and_state_dict_round_trips():
    """The Trainer path: a torch LR scheduler sets the group's lr; a missing gradient is a zero
    one; ``state_dict`` / ``load_state_dict`` carry the slot buffers and step counts."""
    config = OptimConfig(name="adamw", lr=0.1, weight_decay=0.0)
    param = torch.nn.Parameter(torch.ones(2, 3))
    optimizer = SlotOptimizer({"w": param}, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    reference = torch.nn.Parameter(torch.ones(3))
    torch_adamw = torch.optim.AdamW([reference], lr=0.1, weight_decay=0.0)
    torch_schedule = torch.optim.lr_scheduler.LambdaLR(torch_adamw, lambda step: 0.5 ** step)
    for t in range(3):
        grad = torch.full((3,), float(t + 1))
        param.grad, reference.grad = grad.expand(2, 3).clone(), grad.clone()
        optimizer.step(), torch_adamw.step()
        schedule.step(), torch_schedule.step()
    torch.testing.assert_close(param.detach()[1], reference.detach(), atol=1e-6, rtol=1e-6)
    copy = SlotOptimizer({"w": torch.nn.Parameter(torch.ones(2, 3))}, config)
    copy.load_state_dict(optimizer.state_dict())
    assert torch.equal(copy.read_slot(1)["exp_avg/w"], optimizer.read_slot(1)["exp_avg/w"])
    assert copy.read_slot(0)["step"] == 3 and copy.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    param.grad = None  # no gradient: a zero gradient (weight decay 0, so only the moments decay)
    before = optimizer.read_slot(0)["exp_avg/w"]
    optimizer.step()
    assert torch.equal(optimizer.read_slot(0)["exp_avg/w"], before * config.betas[0])
