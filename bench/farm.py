"""The replay farm: interval replays per second in-process, on 1 and on 2 Ray workers, and
what each task costs the coordinator.

    .venv/bin/python bench/farm.py [--intervals 16] [--every 100] [--rounds 5] [--reps 3]

One digits-mlp job of ``intervals x every`` steps with every checkpoint published (so each
sampled interval is one independent task, as in a full audit at rate 1). Each round runs, in
turn (interleaved, so a load change hits all alike):

- ``local``: the watcher without ``--ray`` (LocalFarm, this process, torch pinned to 1
  thread);
- ``ray-1`` / ``ray-2``: a fresh loopback Ray cluster of 1 / 2 CPUs, every task asking for
  1 CPU (so 1 / 2 workers, 1 torch thread each); the workers are warmed up first (torch
  imported, the bundle fetched and verified once per worker, as in a long-running farm).

Each farm gives ``--reps`` samples per round (a sample: all intervals submitted at once,
every answer read). Then, on the 2-worker cluster, tasks one at a time: the coordinator's
cost per task (wall time from submit to answer minus the worker's own replay time:
scheduling, argument and result transfer, validation) and its CPU seconds per task, plus
the round trip of an empty task. Writes bench/results/farm.json (medians, quartiles,
ratios to ray-1 measured in the same run) and prints a table. docs/scaling.md projects
these figures to 10-1,000 workers.
"""

# ruff: noqa: E402  (imports follow the sys.path fix below)
from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from rich.progress import track

from bench._report import pin_threads, spread, table, write
from protocol.blobs import FileStore
from replay.data.publish import publish_state
from replay.dispute.players import Computation, example_computation, job_spec_for, write_job_bundle
from replay.scale.cluster import LocalCluster, disconnect
from replay.scale.farm import Farm, IntervalOutcome, IntervalTask, LocalFarm, RayFarm


def make_job(folder: Path, intervals: int, every: int) -> tuple[Computation, list[IntervalTask]]:
    comp = example_computation("digits-mlp", intervals * every, every)
    store = FileStore(folder / "store")
    bundle = write_job_bundle(store, comp)
    spec = job_spec_for(comp, bundle=bundle, stake=1, bond=1, clock=3600, window=3600,
                        train_time=600)  # fmt: skip
    committed = comp.checkpoint_roots()
    for c in track(range(1, intervals), description="publishing checkpoints"):
        publish_state(store, comp.program, c * every, comp.state_before(c * every))
    tasks = [
        IntervalTask(
            job_id=1, spec=spec, committed=committed, interval=c, stores=[str(folder / "store")]
        )
        for c in range(intervals)
    ]
    return comp, tasks


def run_all(
    farm: Farm, tasks: list[IntervalTask], honest: Computation
) -> tuple[float, float, list[IntervalOutcome]]:
    """Submit every task at once, read every answer: wall seconds, coordinator CPU seconds,
    the outcomes."""
    c0, t0 = time.process_time(), time.perf_counter()
    pending = [farm.submit(t, honest) for t in tasks]
    outcomes = [p.result() for p in pending]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert all(o.bad is None and o.matched == [o.interval] for o in outcomes), "a replay differs"
    return wall, cpu, outcomes


def _noop() -> int:
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--intervals", type=int, default=16)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3, help="samples per farm per round")
    args = ap.parse_args()
    pin_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-farm-") as tmp:
        honest, tasks = make_job(Path(tmp), args.intervals, args.every)
        store = FileStore(Path(tmp) / "store")
        walls: dict[str, list[float]] = {"local": [], "ray-1": [], "ray-2": []}
        cpus: dict[str, list[float]] = {k: [] for k in walls}
        overhead: list[float] = []
        coord_cpu: list[float] = []
        noop: list[float] = []
        task_s: list[float] = []  # one interval's replay, in-process (the worker's share)
        fetch_s: list[float] = []  # of which: fetching and verifying its checkpoint
        for r in track(range(args.rounds), description="rounds (local, ray-1, ray-2)"):
            run_all(LocalFarm(store), tasks[:1], honest.fresh())  # warm
            for _ in range(args.reps):
                wall, cpu, outcomes = run_all(LocalFarm(store), tasks, honest.fresh())
                walls["local"].append(wall)
                cpus["local"].append(cpu)
                task_s += [o.seconds for o in outcomes]
                fetch_s += [o.fetch_seconds for o in outcomes]
            for workers in (1, 2):
                with LocalCluster(cpus=workers) as cluster:
                    farm = RayFarm(cluster.address, cpus=1)
                    run_all(farm, tasks[: 2 * workers], honest)  # warm every worker
                    for _ in range(args.reps):
                        wall, cpu, _ = run_all(farm, tasks, honest)
                        walls[f"ray-{workers}"].append(wall)
                        cpus[f"ray-{workers}"].append(cpu)
                    if workers == 2 and r == args.rounds - 1:  # one at a time: cost per task
                        farm.overhead.clear()
                        for t in tasks:
                            c0 = time.process_time()
                            farm.submit(t, honest).result()
                            coord_cpu.append(time.process_time() - c0)
                        overhead = list(farm.overhead)
                        ping = farm.ray.remote(_noop)
                        farm.ray.get(ping.remote())
                        for _ in range(50):
                            t0 = time.perf_counter()
                            farm.ray.get(ping.remote())
                            noop.append(time.perf_counter() - t0)
                    disconnect()
        n = len(tasks)
        rates = {k: spread([n / w for w in v]) for k, v in walls.items()}
        base = rates["ray-1"]["median"]
        task_bytes = len(pickle.dumps(tasks[0].model_dump(exclude={"committed"})))
        roots_bytes = len(pickle.dumps(tasks[0].committed))  # once per commitment
        state_bytes = sum(v.nbytes for v in honest.state_before(0).values())
        result = {
            "what": "interval replays per second (digits-mlp, every checkpoint published)",
            "job": {
                "intervals": n,
                "every": args.every,
                "steps_per_task": args.every,
                "checkpoint_bytes": state_bytes,
                "task_argument_bytes": task_bytes,
                "committed_roots_bytes_once_per_commitment": roots_bytes,
            },
            "threads_per_task": 1,
            "rounds": args.rounds,
            "samples_per_round": args.reps,
            "intervals_per_s": rates,
            "ratio_to_ray_1": {k: v["median"] / base for k, v in rates.items()},
            "coordinator_cpu_s_per_task_in_batch": {
                k: spread([c / n for c in v]) for k, v in cpus.items()
            },
            "task_seconds_in_process": spread(task_s),
            "checkpoint_fetch_seconds": spread(fetch_s),
            "one_at_a_time": {
                "overhead_s_per_task": spread(overhead),
                "coordinator_cpu_s_per_task": spread(coord_cpu),
                "empty_task_round_trip_s": spread(noop),
            },
            "note": "workers warmed up (torch imported, bundle fetched once per worker); "
            "cluster start (~4 s) not counted",
        }
    rows = [
        [k, f"{v['median']:.1f}", f"{v['p25']:.1f}-{v['p75']:.1f}", f"{v['median'] / base:.2f}"]
        for k, v in rates.items()
    ]
    table("replay farm: intervals/s (1 torch thread per task)",
          ["farm", "median", "p25-p75", "/ ray-1"], rows)  # fmt: skip
    oh = result["one_at_a_time"]
    print(f"coordinator per task: overhead {oh['overhead_s_per_task']['median'] * 1e3:.2f} ms, "
          f"CPU {oh['coordinator_cpu_s_per_task']['median'] * 1e3:.2f} ms; empty task round "
          f"trip {oh['empty_task_round_trip_s']['median'] * 1e3:.2f} ms")  # fmt: skip
    print(write("farm", result))


if __name__ == "__main__":
    main()
