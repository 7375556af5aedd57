"""SCAFFOLD (Karimireddy et al., ICML 2020, Algorithm 1), control variates of option II.

Client i starts from the global x and its control c_i, and corrects every local gradient with the
drift between its control and the server's c (line 10)::

    y_i <- y_i - eta_l (g_i(y_i) - c_i + c)

After its K local steps (line 12, option II; ``sum_k eta_l`` replaces K eta_l under a schedule)::

    c_i+ = c_i - c + (x - y_i) / (K eta_l)          uploads  dy_i = y_i - x,  dc_i = c_i+ - c_i

The server (lines 16-17), over the |S| clients of the round with data, N clients in all::

    x <- x + eta_g * 1/|S| sum_i dy_i               c <- c + 1/N sum_i dc_i

The means are unweighted, as in the paper. c_i and c start at zero. Every shared parameter has a
control; private parameters train uncorrected. The correction assumes plain local SGD (the
paper's setting); with momentum or AdamW it is applied to the gradient the optimizer sees.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from fedvlm.algorithms.base import ALGORITHMS, AlgorithmConfig


def _per_slot(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (like.dim() - 1)).to(like.dtype)


@ALGORITHMS.register("scaffold")
class Scaffold(AlgorithmConfig):
    client_state: ClassVar[tuple[str, ...]] = ("control",)  # c_i
    uploads: ClassVar[tuple[str, ...]] = ("control_delta",)  # dc_i (besides y_i)
    broadcasts: ClassVar[tuple[str, ...]] = ("control",)  # c (besides x)
    global_lr: float = Field(1.0, gt=0)  # eta_g; the paper's experiments use 1

    # ------------------------------------------------------------------ client half

    def correct_gradients(self, grads, client_state, server_state):
        for key, control in client_state.items():
            name = key.split("/", 1)[1]
            grads[name] = grads[name] - control + server_state[key].to(control.device).unsqueeze(0)

    def finish_client(self, start, end, client_state, lr_sum, server_state):
        new_state, extras = {}, {}
        for name, final in end.items():
            key = f"control/{name}"
            control, server_control = client_state[key], server_state[key].to(final.device).unsqueeze(0)
            rate = _per_slot(lr_sum, final)
            updated = control - server_control + (start[name] - final) / rate.clamp(min=torch.finfo(rate.dtype).tiny)
            new_state[key] = torch.where(rate > 0, updated, control)  # a client without steps keeps its c_i
            extras[f"control_delta/{name}"] = new_state[key] - control
        return end, extras, new_state

    # ------------------------------------------------------------------ server half

    def init_server_state(self, global_shared):
        return {f"control/{name}": torch.zeros_like(value) for name, value in global_shared.items()}

    def client_terms(self, current, update):
        """``dy_i = y_i - x`` and ``dc_i`` of a client with data; zeros for one without (line 16's
        mean runs over the clients of the round with data)."""
        has_data = update.num_samples > 0
        terms = {}
        for name, value in current.items():
            change = update.shared[name].double() - value.double()
            terms[f"change/{name}"] = change if has_data else torch.zeros_like(change)
            delta = update.extras[f"control_delta/{name}"].double()
            terms[f"control_delta/{name}"] = delta if has_data else torch.zeros_like(delta)
        return terms

    def server_step_from_sums(self, current, sums, server_state, round_info):
        participants = max(sums.participants, 1)  # none: both sums are zero, nothing moves
        result, state = {}, {}
        for name, value in current.items():
            change = sums.tensors[f"change/{name}"] / participants  # 1/|S| sum_i dy_i
            result[name] = value + (self.global_lr * change).to(value.dtype)
            key = f"control/{name}"
            # |S|/N * mean_i dc_i = sum_i dc_i / N
            state[key] = server_state[key] + (sums.tensors[f"control_delta/{name}"] / round_info.num_clients).to(
                server_state[key].dtype)
        return result, state
