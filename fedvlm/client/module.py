"""``HeadModule``: the LightningModule of fedvlm, a frozen CLIP and one slot-stacked head.

One instance per process serves every client: clients move in and out of the head's slots between
passes (:meth:`HeadModule.load_clients` / :meth:`HeadModule.read_clients`), and the Lightning hooks
do one local step of every client in the slots at once. Two drivers call the same hooks:

* the federated round loop (:func:`fedvlm.client.training.train_pass`, run by
  :mod:`fedvlm.simulation` under Fabric): it calls ``training_step``, backward,
  ``on_before_optimizer_step``, the optimizer and ``on_train_batch_end`` itself. The module is
  moved with ``.to(device)`` and never set up by Fabric: ``fabric.setup`` would wrap it in
  DistributedDataParallel, which would average the gradients of *different* clients on different
  ranks (and block once ranks take different numbers of local steps). Nothing here reads
  ``self.trainer``, ``current_epoch`` or ``global_step`` on that path (Lightning leaves them at 0
  without a Trainer), and ``self.log`` is called only when a Trainer drives the module;
* ``lightning.Trainer.fit(module, FeatureDataModule(config))`` (:mod:`fedvlm.datamodule`):
  the papers' "Centralized" column, one slot holding one client with every training row, an
  epoch being one fedvlm round.

The backbone is a registered submodule (so ``.to()`` and the Trainer move it), frozen and pinned
to eval mode (:meth:`FrozenCLIP.train`), and kept out of checkpoints: ``on_save_checkpoint``
drops its tensors and records its identity, ``on_load_checkpoint`` refuses a checkpoint made on
another backbone in one line, and ``strict_loading = False`` lets the head load without it.
"""

from __future__ import annotations

import lightning as L
import torch

from fedvlm.client.optim import SlotOptimizer, learning_rate
from fedvlm.errors import ConfigError
from fedvlm.heads.base import Batch, Head

Tensors = dict[str, torch.Tensor]


class ScheduledRate(torch.optim.lr_scheduler.LRScheduler):
    """Sets the group rate of optimizer step n to ``rate(n)`` itself (torch's ``LambdaLR`` would
    multiply the base rate by a factor, which can round differently from the federated loop's
    rate by one unit in the last place)."""

    def __init__(self, optimizer: torch.optim.Optimizer, rate):
        self.rate = rate
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [float(self.rate(self.last_epoch)) for _ in self.optimizer.param_groups]

    def state_dict(self) -> dict:  # the rate is code, rebuilt from the config: never saved
        return {key: value for key, value in super().state_dict().items() if key != "rate"}


class HeadModule(L.LightningModule):
    """Frozen CLIP + one head holding ``num_slots`` clients ``[S, ...]``.

    Built from an experiment config (``HeadModule(config, classnames, template)``, which loads the
    backbone and makes the head; a checkpoint restores it with ``HeadModule.load_from_checkpoint``),
    or around an existing head (``HeadModule(config, head=head)``; the federated loop does this
    with the head of its federation; ``config=None`` gives a module for :func:`train_pass` alone:
    no algorithm, no ``configure_optimizers``).
    """

    def __init__(self, config=None, classnames: list[str] | None = None, template: str | None = None,
                 num_slots: int = 1, *, backbone=None, head: Head | None = None):
        super().__init__()
        from fedvlm.config import ExperimentConfig, build_config  # the composition root, imported late
        from fedvlm.tasks import TASKS

        if isinstance(config, dict):  # from a checkpoint's hyperparameters (JSON types)
            config = build_config(config)
        assert config is None or isinstance(config, ExperimentConfig)
        self.config = config
        if head is None:
            if config is None or classnames is None:
                raise ConfigError("HeadModule: give an experiment config with the class names, or a head")
            from fedvlm.backbone.clip import FrozenCLIP
            from fedvlm.data.datasets import data_spec
            from fedvlm.heads import HEADS

            template = template or config.data.template or data_spec(config.data).template
            backbone = backbone or FrozenCLIP.load(config.model.name, config.model.pretrained, config.model.precision)
            head = HEADS.get(config.head.name)(config.head, backbone, classnames, template, num_slots=num_slots,
                                               seed=config.seed)
            self.save_hyperparameters({"config": config.to_dict(), "classnames": list(classnames),
                                       "template": template, "num_slots": num_slots})
        # registered here (the head holds it unregistered, as every head does): .to() and the
        # Trainer move it; its tensors are dropped from checkpoints (on_save_checkpoint)
        self.backbone = head.backbone if isinstance(head.backbone, torch.nn.Module) else None
        self.head = head
        self.algorithm = config.algorithm if config is not None else None
        self.task = None
        if config is not None:
            from fedvlm.data.datasets import data_spec

            self.task = TASKS.get(data_spec(config.data).task)(config.eval.threshold, config.eval.top_k)
        self.strict_loading = False  # checkpoints hold the head only
        slots = head.num_slots
        # slot bookkeeping on the device: the losses of a pass are read once, after it (no sync per step)
        self.register_buffer("slot_loss", torch.zeros(slots, dtype=torch.float64), persistent=False)
        self.register_buffer("active", torch.ones(slots, dtype=torch.bool), persistent=False)  # slots that step
        # the round's algorithm inputs (federated path): the global shared parameters, the server
        # state and the pass's per-client state stacked into slots
        self.global_shared: Tensors | None = None
        self.server_state: Tensors = {}
        self.client_state: Tensors = {}
        self.last_metrics: dict[str, float] = {}

    # ---------------------------------------------------------------- federated plumbing

    def load_clients(self, starts: list[Tensors], optimizer: SlotOptimizer | None,
                     optimizer_states: list[Tensors | None], client_state: Tensors) -> None:
        """Put clients in slots ``0..len(starts)-1``: their parameters, optimizer state (None:
        fresh) and the algorithm's per-client state, already stacked into slots ``[S, ...]``; the
        slot losses start at zero."""
        for slot, start in enumerate(starts):
            self.head.write_slot(slot, start)
            if optimizer is not None:
                optimizer.write_slot(slot, optimizer_states[slot])
        self.client_state = client_state
        self.slot_loss.zero_()

    def read_clients(self, count: int, optimizer: SlotOptimizer | None) -> list[tuple[Tensors, Tensors | None]]:
        """The trained parameters and optimizer state of slots ``0..count-1`` (copies)."""
        return [(self.head.read_slot(slot), optimizer.read_slot(slot) if optimizer is not None else None)
                for slot in range(count)]

    def shared_parameters(self) -> Tensors:
        params = self.head.trainable()
        return {name: params[name] for name in self.head.shared_names()}

    # -------------------------------------------------------------------- Lightning hooks

    def forward(self, batch: Batch) -> torch.Tensor:
        """``[B, C]`` class scores (``[B, 1 + K, D]`` embeddings for retrieval heads)."""
        return self.head(batch)

    def training_step(self, batch: Batch, batch_idx: int = 0) -> torch.Tensor:
        """Per-slot losses ``[S]`` (+ the algorithm's local penalty, e.g. FedProx's
        mu/2 ||w - w_global||^2), masked by ``active`` and summed: slot s's parameters only
        receive slot s's gradient, so each client steps exactly as it would alone."""
        per_slot = self.head.training_loss(batch)  # [S]
        if self.algorithm is not None and self.global_shared is not None:
            extra = self.algorithm.local_penalty(self.shared_parameters(), self.global_shared, self.client_state,
                                                 self.server_state)
            if extra is not None:
                per_slot = per_slot + extra
        per_slot = per_slot * self.active  # slots without a batch contribute nothing
        self.slot_loss += per_slot.detach().double()
        loss = per_slot.sum()
        if self._trainer is not None:  # a Trainer drives the module (Fabric's log has no step: not used)
            self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(batch.slot))
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """The algorithm's gradient correction (SCAFFOLD: g + c - c_i) on the slot gradients, and
        the active mask handed to the optimizer (finished slots do not step)."""
        params = self.head.trainable()
        for param in params.values():
            if param.grad is None:  # a slot parameter the loss does not reach: a zero gradient
                param.grad = torch.zeros_like(param)
        if self.algorithm is not None:
            grads = {name: p.grad for name, p in params.items()}
            self.algorithm.correct_gradients(grads, self.client_state, self.server_state)
            for name, param in params.items():  # a correction may edit in place or give new tensors
                param.grad = grads[name]
        getattr(optimizer, "_optimizer", optimizer).active = self.active  # LightningOptimizer wraps it

    def on_train_batch_end(self, outputs, batch, batch_idx: int = 0) -> None:
        self.head.after_step(self.active)  # e.g. RDB's EMA teacher follows its slot

    def configure_optimizers(self):
        """``SlotOptimizer`` with the run's schedule (:func:`fedvlm.client.optim.learning_rate`),
        stepped per optimizer step: Trainer epoch r is fedvlm round r, whose ``steps`` local steps
        get the rates the federated loop gives a client with ``steps`` steps per round."""
        if self.config is None:
            raise ConfigError("HeadModule: configure_optimizers needs the experiment config (HeadModule(config, ...))")
        optimizer = SlotOptimizer(self.head.trainable(), self.config.optim)
        rounds = self.config.federation.rounds
        steps = max(1, int(self.trainer.estimated_stepping_batches) // max(1, self.trainer.max_epochs))

        def rate(step: int) -> float:
            return learning_rate(self.config.optim, rounds, step // steps, step % steps, steps)

        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": ScheduledRate(optimizer, rate),
                                                         "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        """A Trainer epoch is a fedvlm round: without ``optim.keep_state`` a client starts every
        round with a fresh optimizer (zero momentum, AdamW's step count at 0), as in the loop."""
        if self.config is not None and not self.config.optim.keep_state:
            optimizer = self.optimizers(use_pl_optimizer=False)
            for slot in range(self.head.num_slots):
                optimizer.write_slot(slot, None)
        self.slot_loss.zero_()

    def validation_step(self, batch: tuple[torch.Tensor, Batch], batch_idx: int = 0) -> None:
        """``batch``: (positions of its rows in the test split ``[B]``, the batch); slot 0 scores."""
        positions, inputs = batch
        self._scored.append((positions.cpu(), self(inputs).float().cpu(), inputs.labels.cpu()))

    def on_validation_epoch_start(self) -> None:
        self._scored: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_validation_epoch_end(self) -> None:
        """The task's metrics of the whole test split. Rows every process scored are gathered and
        each test row is counted once (a distributed sampler pads ranks with repeated rows)."""
        scored = self._scored
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, scored)
            scored = [part for parts in gathered for part in parts]
        if not scored:
            return
        positions = torch.cat([p for p, _, _ in scored])
        first = {int(position): index for index, position in reversed(list(enumerate(positions.tolist())))}
        order = torch.tensor([first[p] for p in sorted(first)])
        scores, labels = torch.cat([s for _, s, _ in scored])[order], torch.cat([y for _, _, y in scored])[order]
        self.last_metrics = self.task.metrics(scores, labels)
        if self._trainer is not None:
            self.log_dict({f"val/{name}": value for name, value in self.last_metrics.items()})

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The head only, and the identity of the backbone it was trained on."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("backbone.")}
        checkpoint["fedvlm"] = {"backbone": self._backbone_identity(), "head": type(self.head).__name__}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("fedvlm", {}).get("backbone")
        if saved != self._backbone_identity():
            raise ConfigError(f"checkpoint: its head was trained on backbone {saved}, this module's is "
                              f"{self._backbone_identity()}; load it with the model.name and model.pretrained "
                              "it was trained with")
        if self.backbone is not None:  # the same frozen weights, so the state loads whole (no missing keys)
            checkpoint["state_dict"].update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})

    def _backbone_identity(self) -> str | None:
        return self.backbone.identity() if self.backbone is not None else None
