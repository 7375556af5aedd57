"""Each client's kept state in files under the run folder (``runtime.client_state: disk``)::

    <run>/client_state/client<k>.round<r>.safetensors

holds what client k keeps after round r, the last round it trained in: its private parameters
(``personal/<name>``), its optimizer state (``optimizer/<buffer>/<name>``, with
``optim.keep_state``) and its algorithm state (``algorithm/<kind>/<name>``: SCAFFOLD's c_i,
FedDyn's gradient). The file is written once per round the client trains, by the rank that owns
it, and read only there: when it trains next, or is evaluated. Only the clients of the current
round are in memory, so a rank's memory does not grow with the federation.

**Why safetensors.** Nothing read from a run folder may run code: a safetensors file is a JSON
header and raw tensor bytes, never a pickle, and it is read through a memory map (``safe_open``),
so a state larger than memory is paged in tensor by tensor. One metadata entry (``fedvlm``, JSON:
format, client, round, CRC-32 of the tensor bytes in name order) lets a read tell a damaged file
(CRC-32: the standard library's fastest checksum, as for the feature cache) from a good one.

**Checkpoints reference the store incrementally.** The checkpoint records, per client, the round
of its current file (``client_state`` in ``checkpoints/last.pt``, the manifest); the files of the
clients that trained since the last checkpoint are new files (new names), so a checkpoint round
writes nothing for the others. The order makes every instant recoverable:

1. a round's files are written to temporary names, fsynced, renamed, and the folder fsynced;
2. a checkpoint round waits for every rank's files (a barrier), then rank 0 commits the
   checkpoint (one atomic rename) naming them;
3. only then, after a second barrier, does each rank remove the versions the commit superseded.

A kill before (2) leaves the previous checkpoint and every file it names; files it does not name
(newer rounds, superseded versions, temporary files) are removed when the run resumes, after
every file the checkpoint names was found whole (:meth:`DiskClientStore.resume`). Any rank can read
any client's file (the run folder is shared), so a run resumes on another process count.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path
from typing import Callable

import torch

from fedvlm.errors import ConfigError

FOLDER = "client_state"
FORMAT = "fedvlm-client-state-1"
SECTIONS = ("personal", "optimizer", "algorithm")
_NAME = re.compile(r"^\.?client(\d+)\.round(\d+)\.safetensors(\.tmp)?$")

# what a client keeps: private parameters, optimizer state (None: none kept), algorithm state (None: none)
Kept = tuple[dict[str, torch.Tensor], "dict[str, torch.Tensor] | None", "dict[str, torch.Tensor] | None"]


def file_name(client: int, version: int) -> str:
    return f"client{client}.round{version}.safetensors"


def _checksum(tensors: dict[str, torch.Tensor]) -> int:
    """CRC-32 of the tensors' bytes in name order (dtype and shape are in the file's header)."""
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy(), crc)
    return crc


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class DiskClientStore:
    """The client-state files of one run, seen from one rank.

    ``layouts``: an example entry of each section (``personal``, ``optimizer``, ``algorithm``:
    names, shapes, dtypes; an empty mapping when the run keeps none of it), what a file must hold.
    ``owns(k)``: whether this rank owns client k; it reads and writes only those (a programming
    error otherwise). ``current`` (client -> round of its newest file) is the same on every rank:
    each rank learns from the round's reports which clients kept new state, so rank 0 writes the
    whole manifest without receiving a tensor.
    """

    def __init__(self, folder: Path, layouts: dict[str, dict[str, torch.Tensor]] | None, owns: Callable[[int], bool],
                 device: torch.device | str = "cpu"):
        self.folder = Path(folder)
        self.layouts = layouts  # None: any tensors (a reader for tools)
        self.owns = owns
        self.device = device
        # a run that keeps nothing per client (CoOp with FedAvg) writes no file
        self.holds_state = layouts is None or any(layouts.values())
        self.current: dict[int, int] = {}  # client -> round of its newest file
        self.committed: dict[int, int] = {}  # client -> round of the file the folder's checkpoint names

    def path(self, client: int, version: int) -> Path:
        return self.folder / file_name(client, version)

    # ------------------------------------------------------------------------------ reads

    def read(self, client: int) -> Kept:
        """What ``client`` keeps, from its newest file (empty when it never trained)."""
        self._check_owner(client, "read")
        if client not in self.current:
            return {}, None, None
        return self._load(client, self.current[client])

    def _load(self, client: int, version: int, verify: bool = False) -> Kept:
        from safetensors import SafetensorError, safe_open

        path = self.path(client, version)
        expected = (f"expected the state of client {client} after round {version} that checkpoints/last.pt "
                    f"names, written by fedvlm run (runtime.client_state: disk)")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as stream:  # a memory map
                header = json.loads((stream.metadata() or {}).get("fedvlm", "null"))
                tensors = {name: stream.get_tensor(name) for name in stream.keys()}
        except FileNotFoundError:
            raise ConfigError(f"client state {path}: does not exist; {expected}") from None
        except (SafetensorError, json.JSONDecodeError, OSError) as error:
            reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
            raise ConfigError(f"client state {path}: cannot be read as a safetensors file ({reason}); "
                              f"{expected}") from None
        problem = self._problem(header, tensors, client, version, verify)
        if problem:
            raise ConfigError(f"client state {path}: {problem}; {expected}")
        sections = {section: {name[len(section) + 1:]: tensor.to(self.device) for name, tensor in tensors.items()
                              if name.startswith(section + "/")} for section in SECTIONS}
        return sections["personal"], sections["optimizer"] or None, sections["algorithm"] or None

    def _problem(self, header, tensors: dict[str, torch.Tensor], client: int, version: int,
                 verify: bool) -> str | None:
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            return f"has no {FORMAT} header (another program wrote it)"
        if header.get("client") != client or header.get("round") != version:
            return f"holds client {header.get('client')!r} after round {header.get('round')!r}"
        for section in SECTIONS:
            names = {name[len(section) + 1:]: t for name, t in tensors.items() if name.startswith(section + "/")}
            if self.layouts is None:
                break  # a reader for tools: any tensors
            layout = self.layouts.get(section, {})
            if section != "personal" and not names:
                continue  # optimizer and algorithm state are optional (a fresh optimizer, zeros)
            if sorted(names) != sorted(layout) or any(
                    names[n].shape != layout[n].shape or names[n].dtype != layout[n].dtype for n in layout):
                return (f"holds other {section} tensors than this run keeps ({', '.join(sorted(names)) or 'none'} "
                        f"for {', '.join(sorted(layout)) or 'none'}, or other shapes)")
        if verify and header.get("crc32") != _checksum(tensors):
            return "fails its checksum (the file was altered or damaged)"
        return None

    # ----------------------------------------------------------------------------- writes

    def keep_round(self, version: int, kept: dict[int, Kept], clients: list[int]) -> None:
        """After round ``version`` (1-based): write what this rank's trained clients keep
        (``kept``), durably, and record on every rank that ``clients`` (every rank's clients that
        kept new state this round) now have files of this round. A version no checkpoint names is
        removed once its successor is durable; one the checkpoint names stays until the next commit."""
        if not self.holds_state:
            return
        self.folder.mkdir(exist_ok=True)
        for client, entry in sorted(kept.items()):
            self._write(client, version, entry)
        if kept:
            _fsync_folder(self.folder)  # the renames survive a power cut
        for client in clients:
            previous = self.current.get(client)
            self.current[client] = version
            if self.owns(client) and previous not in (None, version, self.committed.get(client)):
                self.path(client, previous).unlink(missing_ok=True)

    def _write(self, client: int, version: int, entry: Kept) -> None:
        from safetensors.torch import save

        self._check_owner(client, "write")
        tensors = {f"{section}/{name}": value.detach().to("cpu").contiguous().clone()
                   for section, values in zip(SECTIONS, entry) for name, value in (values or {}).items()}
        header = {"format": FORMAT, "client": client, "round": version, "crc32": _checksum(tensors)}
        path = self.path(client, version)
        temporary = path.with_name(f".{path.name}.tmp")
        # one metadata key: safetensors writes several in hash-map order, which would vary the bytes
        data = save(tensors, metadata={"fedvlm": json.dumps(header, sort_keys=True)})
        with temporary.open("wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)

    def committed_now(self) -> None:
        """The checkpoint naming ``current`` is committed (every rank has passed the barrier after
        it): remove this rank's versions it superseded."""
        for client, version in self.current.items():
            previous = self.committed.get(client)
            if previous is not None and previous != version and self.owns(client):
                self.path(client, previous).unlink(missing_ok=True)
        self.committed = dict(self.current)

    def manifest(self) -> dict[int, int]:
        """What the checkpoint records: client -> round of its current file."""
        return dict(sorted(self.current.items()))

    # ----------------------------------------------------------------------------- resume

    def resume(self, manifest: dict[int, int], first_problem: Callable[[int], int] | None = None) -> None:
        """Continue from a checkpoint's ``manifest``: every file of this rank's clients it names
        is read whole (header, tensors, checksum); a missing or damaged one is one ConfigError
        line naming the file, on every rank (``first_problem``: the smallest failing client over
        the ranks, an all-reduce min), and nothing is removed. Then this rank's files the manifest
        does not name (rounds after the checkpoint, superseded versions, temporary files) go."""
        none = max(manifest) + 1 if manifest else 0  # no failing client
        failing = none
        for client, version in sorted(manifest.items()):
            if self.owns(client):
                try:
                    self._load(client, version, verify=True)
                except ConfigError:
                    failing = client
                    break
        if first_problem is not None:
            failing = first_problem(failing)
        if failing != none:
            self._load(failing, manifest[failing], verify=True)  # raises the file's one line, on every rank
        self.current, self.committed = dict(manifest), dict(manifest)
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            match = _NAME.match(path.name)
            if match and self.owns(int(match[1])) and (
                    match[3] or manifest.get(int(match[1])) != int(match[2])):
                path.unlink(missing_ok=True)

    def _check_owner(self, client: int, what: str) -> None:
        if not self.owns(client):
            raise RuntimeError(f"client state: this rank tried to {what} client {client}, which another rank owns")


def load_client_states(run_folder: str | Path, manifest: dict[int, int]) -> tuple[dict, dict, dict]:
    """Every client's kept state of a finished or resumable run (``personal``, ``optimizer``,
    ``algorithm_clients``, client order), read from the files ``manifest`` (the checkpoint's
    ``client_state``) names: for tools and tests, the same mappings a memory-mode checkpoint holds."""
    store = DiskClientStore(Path(run_folder) / FOLDER, None, owns=lambda client: True)
    personal, optimizer, algorithm = {}, {}, {}
    for client, version in sorted(manifest.items()):
        kept = store._load(client, version, verify=True)
        personal[client] = kept[0]
        if kept[1] is not None:
            optimizer[client] = kept[1]
        if kept[2] is not None:
            algorithm[client] = kept[2]
    return personal, optimizer, algorithm
