"""Checks every registered head passes, parametrised over ``HEADS.names()`` (timm's
``tests/test_models.py`` pattern): a newly registered head is tested as soon as it exists, and
fails here until it has an entry in ``SPECS`` (small options and the inputs it reads).

* the slot rule: a slot's outputs and loss depend only on its own parameters and samples, and its
  loss sends gradient only to its own slot;
* batched == sequential: S clients in one forward give each client what it gets alone, for the
  training loss and the evaluation output;
* save and load: ``read_slot`` / ``write_slot`` round-trip, and a saved ``state_dict`` loaded into
  a fresh head reproduces the outputs;
* the shared / private split: declared private names are parameters, never shared, and every
  trainable tensor is slot-stacked;
* no ``torch.unique`` in a forward pass (it waits for the device every step on a GPU): heads read
  the present slots the batch source computed on the CPU (``Batch.present_slots``).

Batches are built like a real batch source builds them: on the CPU, then ``Batch.to``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from head_checks import CLASSES, TEMPLATE, TensorBatches
from fedvlm.backbone.text_cache import encode_captions
from fedvlm.batch import Batch
from fedvlm.heads import HEADS
from fedvlm.heads.base import RoundContext
from fedvlm.retrieval.batches import CaptionBatches, sentence_end_ids

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster

SLOTS = 3
# 8 samples of 3 clients, interleaved: slot 0 has rows 1, 4, 7; slot 1 rows 3, 6; slot 2 rows 0, 2, 5
ROWS = np.arange(8)
SLOT = np.array([2, 0, 2, 1, 0, 2, 1, 0])
CLIENTS = [10, 11, 12]  # the client id in each slot
STUDENT = {"architecture": "vit_small_patch16_224", "in_channels": 5, "image_size": 16,
           "kwargs": {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}}


@dataclass
class Spec:
    """How the test builds a head: small ``options`` for its config, the ``inputs`` its batches
    carry (``image`` always; ``patches``, ``pixels``, ``captions``, ``bands``) and whether its
    labels are multi-hot (``{1, 0, -1}``, the multi-label heads' ASL) or class indices."""

    options: dict = field(default_factory=dict)
    inputs: frozenset = frozenset({"image"})
    multilabel: bool = False


def _inputs(*names: str) -> frozenset:
    return frozenset({"image", *names})


SPECS = {
    "clip_adapter": Spec({"adapt": ["image", "text"]}, _inputs("captions")),
    "cocoop": Spec(),
    "coop": Spec(),
    "cross_modal_adapter": Spec({"bottleneck": 8}, _inputs("captions")),
    "dualcoop": Spec({"n_ctx": 4}, _inputs("patches"), multilabel=True),
    "fedmpt": Spec({"conditions": ["green lawn", "night"], "adapter_rank": 4}, _inputs("patches"), multilabel=True),
    # ragged attribute lists (1 to 3 per class) and a narrow feed-forward
    "fedmvp": Spec({"feedforward_mult": 1, "attributes": {"red field": ["red soil", "a flat shape"],
                                                          "green forest": ["tall trees"],
                                                          "blue lake": ["still water", "often a shoreline", "ripples"]}},
                   _inputs("pixels"), multilabel=True),
    "fedotp": Spec({}, _inputs("patches")),
    "fedpgp": Spec({"n_ctx": 4}),
    "fedtpg": Spec({"prompt_depth": 2}),
    "fedrsclip": Spec({}, _inputs("patches")),  # DPAC on: begin_round gives it other clients' uploads
    "full_model": Spec({}, _inputs("pixels")),
    "kgcoop": Spec(),
    "maple": Spec({"prompt_depth": 2}, _inputs("pixels")),
    "ms_student": Spec({"student": STUDENT}, _inputs("bands")),
    "otdpp": Spec({"prompt_depth": 2}, _inputs("pixels")),
    "paint": Spec({}, _inputs("pixels")),
    "prograd": Spec({"n_ctx": 6}),
    "plot": Spec({"n_ctx": 4}, _inputs("patches")),
    "positive_coop": Spec({"n_ctx": 4, "positive_residual": True}, _inputs("patches"), multilabel=True),
    "promptsrc": Spec({"prompt_depth": 2}, _inputs("pixels")),
    "ram": Spec({"ot_iterations": 20, "adapter_ratio": 0.1}, _inputs("patches"), multilabel=True),
    "rdb": Spec({"bottleneck": 8, "attention_heads": 2}, _inputs("patches", "captions")),
    "retrieval_full_model": Spec({}, _inputs("pixels", "captions")),
    # a low p_cutoff and scale: some samples are confident, so the prior loss takes part in every check
    "scpnet": Spec({"gcn_hidden": 8, "p_cutoff": 0.3, "logit_scale": 5.0}, multilabel=True),
    "tcp": Spec({"insert_layer": 2}),
    "zeroshot": Spec(),
}


def spec_of(name: str) -> Spec:
    assert name in SPECS, (f"head {name!r} is registered but has no entry in SPECS of {__file__}: add its small "
                           "options and inputs so the registry-wide checks cover it")
    return SPECS[name]


class Inputs:
    """One head's batches: the shared random images (features, patches, pixels), two captions
    each and 5-band scenes, cut down to the inputs the head's spec names."""

    def __init__(self, world: "World", spec: Spec, head_class):
        self.world, self.spec = world, spec
        self.tokens = "caption_tokens" in head_class.inputs
        self.token_ids = "caption_token_ids" in head_class.inputs

    def batch(self, rows, slot, train: bool = True, views=None) -> Batch:
        rows = np.asarray(rows)
        full = self.world.captions.batch(rows, np.asarray(slot, dtype=np.int64), train, views)
        inputs = self.spec.inputs
        extras = {}
        if "captions" in inputs:
            keep = {"caption_valid", "caption_index", "caption_pooled"}
            keep |= {"caption_tokens", "word_index", "word_count", "sentence_count"} if self.tokens else set()
            keep |= {"caption_token_ids"} if self.token_ids else set()
            extras = {k: v for k, v in full.extras.items() if k in keep}
        if "bands" in inputs:
            extras["bands"] = self.world.bands[torch.from_numpy(rows)]
        labels = self.world.multi_hot[torch.from_numpy(rows)] if self.spec.multilabel else full.labels
        return Batch(labels=labels, slot=full.slot, image=full.image,
                     patches=full.patches if "patches" in inputs else None,
                     pixels=full.pixels if "pixels" in inputs else None, extras=extras).to("cpu")


class World:
    def __init__(self, backbone, count: int = 12):
        self.images = TensorBatches(backbone, count=count)
        # every caption distinct (two images with equal captions give a triplet loss without gradient)
        texts = [f"{['cars in rows', 'a field. two trees', 'a lake; boats'][(i + k) % 3]} {CLASSES[i % 3]} {i}."
                 for i in range(count) for k in range(2)]
        self.captions = CaptionBatches(self.images, encode_captions(backbone, texts, tokens=True),
                                       [np.array([2 * i, 2 * i + 1]) for i in range(count)], "cpu", tokens=True,
                                       token_ids=True, end_ids=sentence_end_ids(backbone))
        generator = torch.Generator().manual_seed(5)
        self.bands = torch.randn(count, 5, 16, 16, generator=generator)
        self.multi_hot = torch.randint(-1, 2, (count, len(CLASSES)), generator=generator).float()


@pytest.fixture(scope="module")
def world(tiny_backbone):
    return World(tiny_backbone)


def build(name: str, backbone, slots: int = SLOTS, seed: int = 0):
    head_class = HEADS.get(name)
    spec = spec_of(name)
    head = head_class(head_class.Config(name=name, **spec.options), backbone, CLASSES, TEMPLATE, num_slots=slots,
                      seed=seed)
    return head, spec


def make_clients_differ(head) -> None:
    """Give every slot its own parameters (through ``write_slot``, as the simulation loads a client)."""
    for s in range(head.num_slots):
        generator = torch.Generator().manual_seed(100 + s)
        state = {n: v + 0.05 * torch.randn(v.shape, generator=generator) * (v.std() + 0.02)
                 for n, v in head.read_slot(s).items()}
        head.write_slot(s, state)


def round_context(head) -> RoundContext:
    """A round's context from the head's own slots: the server's shared state and, as last round's
    uploads, each slot's shared parameters under client ids 10, 11, ... (FedRSCLIP's negatives)."""
    shared = head.shared_names()
    return RoundContext(round_index=1, global_shared=head.read_slot(0, shared) if shared else {},
                        previous_uploads={CLIENTS[s]: head.read_slot(s, shared) for s in range(head.num_slots)}
                        if shared else {})


def prepared(name: str, backbone, world):
    """A 3-slot head whose clients differ, its batch source, and the round context it started with."""
    head, spec = build(name, backbone)
    make_clients_differ(head)
    context = round_context(head)
    head.begin_round(context)
    head.begin_pass(CLIENTS)
    return head, Inputs(world, spec, type(head)), context


def outputs(head, data, rows, slot, clients) -> tuple[torch.Tensor, torch.Tensor]:
    """(evaluation output ``[B, ...]``, training loss ``[S]``) of one batch, ``clients[s]`` in slot s.
    The clients are loaded afresh (``begin_pass``) before the loss, so random streams drawn per
    client (RDB's dropout masks) start over and every call sees the same draws."""
    head.eval()
    with torch.no_grad():
        scores = head(data.batch(rows, slot, train=False))
    head.begin_pass(clients)
    head.train()
    with torch.no_grad():
        loss = head.training_loss(data.batch(rows, slot))
    head.eval()
    return scores, loss


def mismatch(actual, expected, what: str) -> str | None:
    """None when ``actual`` equals ``expected`` to float32 tolerance, else what differs (for the
    test's own ``assert not mismatch(...)``)."""
    try:
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    except AssertionError as error:
        return f"{what}: {error}"
    return None


NAMES = HEADS.names()


def test_every_registered_head_has_a_spec():
    assert sorted(SPECS) == sorted(NAMES), "SPECS must name exactly the registered heads"


@pytest.mark.parametrize("name", NAMES)
def test_spec_inputs_match_what_the_head_declares(name, tiny_backbone):
    spec = spec_of(name)
    head_class = HEADS.get(name)
    for name_of_input in ("patches", "pixels", "captions", "bands"):  # what Head.inputs declares
        assert (name_of_input in spec.inputs) == (name_of_input in head_class.inputs), name_of_input
    assert ("captions" in spec.inputs) == (head_class.output_kind == "embeddings")


@pytest.mark.parametrize("name", NAMES)
def test_slot_rule(name, tiny_backbone, world):
    """A slot's rows and loss see only its own parameters and samples; its loss sends gradient
    to its own slot only; a slot absent from the batch changes nothing for the others."""
    head, data, _ = prepared(name, tiny_backbone, world)
    scores, loss = outputs(head, data, ROWS, SLOT, CLIENTS)
    # another client's parameters change: slot 1's rows and loss change, the others' do not
    generator = torch.Generator().manual_seed(7)
    changed = {n: v + 0.1 * torch.randn(v.shape, generator=generator) * (v.std() + 0.02)
               for n, v in head.read_slot(1).items()}
    head.write_slot(1, changed)
    after, after_loss = outputs(head, data, ROWS, SLOT, CLIENTS)
    others = torch.from_numpy(SLOT != 1)
    assert not mismatch(after[others], scores[others], "rows of the unchanged slots")
    assert not mismatch(after_loss[[0, 2]], loss[[0, 2]], "loss of the unchanged slots")
    if changed:
        assert (after[~others] - scores[~others]).abs().max() > 1e-5, "slot 1's parameters did not reach its rows"
    # a batch without slot 1: the same rows and losses for slots 0 and 2
    without = SLOT != 1
    partial, partial_loss = outputs(head, data, ROWS[without], SLOT[without], CLIENTS)
    assert not mismatch(partial, after[others], "rows with slot 1 absent from the batch")
    assert not mismatch(partial_loss[[0, 2]], after_loss[[0, 2]], "loss with slot 1 absent from the batch")
    # gradients: slot j's loss reaches slot j's parameters only
    params = head.trainable()
    if not params:
        return
    head.train()
    reached = []
    for j in range(SLOTS):
        head.begin_pass(CLIENTS)
        slot_loss = head.training_loss(data.batch(ROWS, SLOT))[j]
        grads = torch.autograd.grad(slot_loss, list(params.values()), allow_unused=True)
        own = False
        for (param_name, _), grad in zip(params.items(), grads):
            if grad is None:
                continue
            for i in range(SLOTS):
                if i != j:
                    assert grad[i].abs().max() == 0, f"slot {j}'s loss sends gradient to {param_name}[{i}]"
            own = own or bool(grad[j].abs().max() > 0)
        # a hinge loss already satisfied (the triplet term on two samples) has no gradient at all
        assert own or slot_loss == 0, f"slot {j}'s loss {float(slot_loss)} sends no gradient to its own parameters"
        reached.append(own)
    assert any(reached), "no slot's loss reaches its parameters: the check above tested nothing"


@pytest.mark.parametrize("name", NAMES)
def test_batched_equals_sequential(name, tiny_backbone, world):
    """Three clients in one forward give each client the loss and evaluation rows it gets alone,
    in a one-slot head holding only that client."""
    head, data, context = prepared(name, tiny_backbone, world)
    scores, loss = outputs(head, data, ROWS, SLOT, CLIENTS)
    for k in range(SLOTS):
        alone, spec = build(name, tiny_backbone, slots=1)
        alone.write_slot(0, head.read_slot(k))
        alone.begin_round(context)
        mine = SLOT == k
        alone_scores, alone_loss = outputs(alone, Inputs(world, spec, type(alone)), ROWS[mine], np.zeros(mine.sum()),
                                           [CLIENTS[k]])
        assert not mismatch(scores[torch.from_numpy(mine)], alone_scores, f"client {k}'s evaluation rows")
        assert not mismatch(loss[k], alone_loss[0], f"client {k}'s training loss")


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load(name, tiny_backbone, world):
    """``read_slot`` / ``write_slot`` move a client between slots exactly; a saved ``state_dict``
    loaded into a fresh head reproduces every slot's outputs."""
    head, data, context = prepared(name, tiny_backbone, world)
    scores, loss = outputs(head, data, ROWS, SLOT, CLIENTS)
    state, kept = head.read_slot(2), head.read_slot(2)
    for value in state.values():  # a copy: changing it leaves the head alone
        value.add_(1.0)
    assert all(torch.equal(head.read_slot(2)[n], v) for n, v in kept.items())
    # every client moves one slot up in a fresh head: the same rows at the moved slots
    moved, spec = build(name, tiny_backbone)
    for s in range(SLOTS):
        moved.write_slot((s + 1) % SLOTS, head.read_slot(s))
    for s in range(SLOTS):
        assert all(torch.equal(moved.read_slot((s + 1) % SLOTS)[n], v) for n, v in head.read_slot(s).items())
    moved.begin_round(context)
    moved_scores, moved_loss = outputs(moved, Inputs(world, spec, type(moved)), ROWS, (SLOT + 1) % SLOTS,
                                       [CLIENTS[(s - 1) % SLOTS] for s in range(SLOTS)])
    assert not mismatch(moved_scores, scores, "rows after moving every client one slot up")
    assert not mismatch(moved_loss, loss.roll(1), "losses after moving every client one slot up")
    # a state_dict through bytes (weights only) into a fresh head (at its initial parameters; the
    # same seed, which also seeds the per-client dropout streams, not part of the state)
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    loaded, _ = build(name, tiny_backbone)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert set(head.trainable()) <= set(head.state_dict())
    loaded.begin_round(context)
    loaded_scores, loaded_loss = outputs(loaded, data, ROWS, SLOT, CLIENTS)
    assert not mismatch(loaded_scores, scores, "rows after loading the state_dict")
    assert not mismatch(loaded_loss, loss, "losses after loading the state_dict")


@pytest.mark.parametrize("name", NAMES)
def test_shared_private_split(name, tiny_backbone):
    head, _ = build(name, tiny_backbone)
    trainable = head.trainable()
    shared, private = head.shared_names(), head.private_names()
    assert not set(shared) & set(private)
    assert sorted(shared + private) == sorted(trainable)
    for declared in head.private:
        assert declared in trainable, f"private name {declared!r} is not a trainable parameter of {name}"
        assert declared not in shared
    for param_name, param in trainable.items():
        assert param.shape[0] == SLOTS, f"{param_name} is not slot-stacked: {tuple(param.shape)}"
    assert head.parameters_per_client() == sum(p[0].numel() for p in trainable.values())


class NoUnique(TorchFunctionMode):
    """Fails any ``torch.unique`` / ``Tensor.unique`` call while active; every other call runs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("unique", "unique_consecutive", "_unique", "_unique2"):
            raise AssertionError(f"{func.__name__} called inside a head's forward (a device sync per step on a GPU)")
        return func(*args, **(kwargs or {}))


def test_no_unique_catches_a_call():
    with pytest.raises(AssertionError, match="unique called"), NoUnique():
        torch.unique(torch.tensor([1, 0, 1]), return_inverse=True)


@pytest.mark.parametrize("name", NAMES)
def test_forward_reads_the_present_slots_without_torch_unique(name, tiny_backbone, world):
    head, data, _ = prepared(name, tiny_backbone, world)
    evaluation, training = data.batch(ROWS, SLOT, train=False), data.batch(ROWS, SLOT)
    head.eval()
    with NoUnique(), torch.no_grad():
        head(evaluation)
    head.train()
    with NoUnique():
        loss = head.training_loss(training)
    assert loss.shape == (SLOTS,)
