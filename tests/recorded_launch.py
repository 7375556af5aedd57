"""Run several experiments in one Fabric launch of N gloo processes on the CPU, recording what
every rank receives from every collective (the outputs of Fabric's all_reduce / all_gather and of
the checkpoint's gather to rank 0), tagged with the phase it happened in ("setup": data and
feature extraction; "round"; "checkpoint": the gather of client state to rank 0). Used by
tests/test_reduction_processes.py and by ``make bench``'s scale section (bytes between ranks).

    python tests/recorded_launch.py RUNS.json DEVICES RECORD_DIR

RUNS.json: a list of config overrides (mappings). Writes RECORD_DIR/rank<r>.pt, a list of
``{"collective", "phase", "values"}`` (values: float64, flat), each run's records after a marker
with phase "start". The real Fabric and gloo run; only
the collectives are wrapped, to look at what they hand back. With ``runtime.client_state: disk``,
every read and write of a client's file is recorded too, in RECORD_DIR/store_rank<r>.json
(``[run index, "read" | "write", client]``).
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from fedvlm import simulation
from fedvlm.config import load_config
from fedvlm.tracking.client_store import DiskClientStore


def main(runs_path: str, devices: int, record_dir: str) -> None:
    runs = json.loads(Path(runs_path).read_text())
    configs = [load_config(overrides={**raw, "runtime": {**raw.get("runtime", {}), "devices": devices}})
               for raw in runs]
    fabric = simulation.make_fabric(configs[0])
    fabric.launch()
    received, phase = [], ["round"]

    def record(name, output):
        for tensor in output if isinstance(output, (list, tuple)) else [output]:
            if isinstance(tensor, torch.Tensor):
                received.append({"collective": name, "phase": phase[0],
                                 "values": tensor.detach().double().flatten().cpu().clone()})

    def wrap(name, function):
        def wrapped(tensor, *args, **kwargs):
            output = function(tensor, *args, **kwargs)
            record(name, output)
            return output
        return wrapped

    fabric.all_reduce = wrap("all_reduce", fabric.all_reduce)
    fabric.all_gather = wrap("all_gather", fabric.all_gather)
    gather = dist.gather

    def recorded_gather(tensor, gather_list=None, dst=0, *args, **kwargs):
        result = gather(tensor, gather_list, dst, *args, **kwargs)
        if gather_list is not None:
            record("gather", gather_list)
        return result

    dist.gather = recorded_gather
    collect = simulation.collect_client_state

    def collecting(*args, **kwargs):
        phase[0] = "checkpoint"
        try:
            return collect(*args, **kwargs)
        finally:
            phase[0] = "round"

    simulation.collect_client_state = collecting
    build = simulation.build_federation

    def building(*args, **kwargs):  # data loading and feature extraction: before the rounds
        phase[0] = "setup"
        try:
            return build(*args, **kwargs)
        finally:
            phase[0] = "round"

    simulation.build_federation = building
    store_accesses, current_run = [], [0]
    read, write = DiskClientStore.read, DiskClientStore._write

    def reading(self, client):
        store_accesses.append([current_run[0], "read", client])
        return read(self, client)

    def writing(self, client, version, entry):
        store_accesses.append([current_run[0], "write", client])
        return write(self, client, version, entry)

    DiskClientStore.read, DiskClientStore._write = reading, writing
    for index, config in enumerate(configs):  # a marker record starts each run's records
        current_run[0] = index
        received.append({"collective": "run", "phase": "start", "values": torch.zeros(0, dtype=torch.float64)})
        simulation._run_on_rank(fabric, config)
    Path(record_dir).mkdir(parents=True, exist_ok=True)
    torch.save(received, Path(record_dir) / f"rank{fabric.global_rank}.pt")
    (Path(record_dir) / f"store_rank{fabric.global_rank}.json").write_text(json.dumps(store_accesses))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
