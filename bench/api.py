"""Benchmark of the verification-status endpoint with 100,000 indexed jobs.

One uvicorn server process (the API on the index, plus a trivial ``async`` FastAPI endpoint in
the same app as the same-run baseline); a raw-asyncio keep-alive HTTP/1.1 load generator in this
process (both share the machine's cores). The index is a SQLite file (the default) and, where
PostgreSQL server binaries are installed, also a throwaway PostgreSQL server. Two measurements
per endpoint:

- open loop at a fixed rate (default 500 req/s): latency measured from each request's
  *scheduled* send time (no coordinated omission): p50 / p99;
- closed loop with 16 connections: the maximum requests/s.

    python bench/api.py [--jobs 100000] [--rate 500] [--seconds 10] [--databases sqlite,postgresql]

Writes bench/results/api.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# this file is bench/api.py: keep bench/ behind the repository root so `api` is the package
_BENCH = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != Path(_BENCH)]
sys.path.insert(0, str(Path(_BENCH).parent))
sys.path.append(_BENCH)

from _report import table, write  # noqa: E402

TARGET_RATE = 500.0  # requests/s the status endpoint must sustain ...
TARGET_P99_MS = 20.0  # ... with at most this p99 latency (issue 7, acceptance 5)
#: the bundle check verdicts the jobs cycle through (api.bundles)
BUNDLE_STATUSES = ("verified", "unavailable", "invalid", "unchecked")


def build_index(url: str, jobs: int) -> None:
    """``jobs`` jobs in every status (a sixth disputed, each with a running game), inserted in
    bulk with the shape the indexer gives them."""
    from sqlalchemy import insert

    from api.db import Block, Game, Job, Meta, make_engine, make_sessions
    from api.seed import CHAIN_ID, CONTRACT, REQUESTERS, TRAINERS, _h

    engine = make_engine(url)
    sessions = make_sessions(engine)
    statuses = [1, 2, 3, 3, 4, 5]
    t0 = 1_800_000_000
    with sessions.begin() as s:
        rows, games = [], []
        for j in range(1, jobs + 1):
            st = statuses[j % 6]
            disputed = j % 6 == 3
            rows.append(
                dict(
                    id=j,
                    job_hash=_h("job", j),
                    requester=REQUESTERS[j % 8],
                    trainer=TRAINERS[j % 5] if st > 1 else None,
                    status=st,
                    reward=str(5 * 10**17),
                    stake=str(10**18),
                    bond=str(10**17),
                    program_root=_h("p", j),
                    program_len=359,
                    dataset_root=_h("d", j),
                    initial_root=_h("c0", j),
                    steps=40,
                    every=10,
                    slots=188,
                    clock=3600,
                    window=7200,
                    train_time=3600,
                    registered_at=t0 + j,
                    registered_block=j,
                    accepted_at=t0 + j if st > 1 else None,
                    commit_deadline=t0 + j + 3600 if st > 1 else None,
                    committed_at=t0 + j if st > 2 else None,
                    challenge_deadline=t0 + j + 7200 if st > 2 else None,
                    closed_at=None,
                    run_root=_h("run", j) if st > 2 else None,
                    open_games=1 if disputed else 0,
                    games_total=1 if disputed else 0,
                    updated_block=j,
                    bundle=_h("bundle", j),
                    bundle_status=BUNDLE_STATUSES[j % 4],
                    bundle_part="batch of step 3" if j % 4 == 2 else None,
                    bundle_why="its tensors do not hash to the step's dataset leaf"
                    if j % 4 == 2
                    else None,
                    bundle_checked_at=t0 + j if j % 4 < 3 else None,
                )
            )
            if disputed:
                games.append(
                    dict(
                        id=len(games) + 1,
                        job_id=j,
                        challenger=REQUESTERS[(j + 3) % 8],
                        interval=1,
                        bond=str(10**17),
                        phase=8,
                        seq=13,
                        lo=0,
                        hi=128,
                        step=11,
                        op=6,
                        numel=640,
                        node_lo=1,
                        node_hi=2,
                        element=300,
                        trainer_clock=3500,
                        challenger_clock=3550,
                        last_move=t0 + j + 100,
                        settled=False,
                        opened_at=t0 + j,
                        updated_block=j,
                    )
                )
            if len(rows) >= 10_000:
                s.execute(insert(Job), rows)
                rows = []
        if rows:
            s.execute(insert(Job), rows)
        for i in range(0, len(games), 10_000):
            s.execute(insert(Game), games[i : i + 10_000])
        s.merge(Meta(key="chain_id", value=str(CHAIN_ID)))
        s.merge(Meta(key="contract", value=CONTRACT))
        s.merge(Meta(key="tip", value=str(jobs)))
        s.merge(Block(number=jobs, hash=_h("b"), timestamp=t0 + jobs))
    engine.dispose()


def serve(url: str, port: int) -> None:
    """The server process: the API plus the trivial baseline endpoint, one uvicorn worker."""
    import logging

    import uvicorn

    from api.app import create_app
    from api.db import make_engine, make_sessions

    logging.getLogger("trainproof").setLevel(logging.WARNING)
    app = create_app(make_sessions(make_engine(url)))

    @app.get("/bench/trivial", include_in_schema=False)
    async def trivial() -> dict[str, bool]:
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    async def get(self, path: str) -> int:
        self.w.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        await self.w.drain()
        head = await self.r.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await self.r.readexactly(length)
        return status


async def connect(port: int, n: int) -> list[Conn]:
    return [Conn(*await asyncio.open_connection("127.0.0.1", port)) for _ in range(n)]


async def open_loop(port: int, paths: list[str], rate: float, seconds: float) -> dict:
    conns = await connect(port, 64)
    free: asyncio.Queue[Conn] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    lat: list[float] = []
    errors = 0
    n = int(rate * seconds)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1

    async def one(i: int) -> None:
        nonlocal errors
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - loop.time()))
        c = await free.get()
        try:
            if await c.get(paths[i % len(paths)]) != 200:
                errors += 1
        finally:
            free.put_nowait(c)
        lat.append(loop.time() - scheduled)

    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = loop.time() - start
    for c in conns:
        c.w.close()
    lat.sort()
    return {
        "rate_target": rate,
        "requests": n,
        "errors": errors,
        "achieved_rps": round(n / elapsed, 1),
        "p50_ms": round(1000 * lat[len(lat) // 2], 3),
        "p99_ms": round(1000 * lat[int(len(lat) * 0.99) - 1], 3),
        "max_ms": round(1000 * lat[-1], 3),
    }


async def closed_loop(port: int, paths: list[str], seconds: float, conc: int = 16) -> dict:
    conns = await connect(port, conc)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    lat: list[float] = []

    async def worker(c: Conn, k: int) -> None:
        i = k
        while loop.time() < end:
            t = loop.time()
            await c.get(paths[i % len(paths)])
            lat.append(loop.time() - t)
            i += conc

    t0 = loop.time()
    await asyncio.gather(*(worker(c, k) for k, c in enumerate(conns)))
    elapsed = loop.time() - t0
    for c in conns:
        c.w.close()
    return {
        "concurrency": conc,
        "requests": len(lat),
        "rps": round(len(lat) / elapsed, 1),
        "mean_ms": round(1000 * statistics.fmean(lat), 3),
    }


def measure(url: str, args: argparse.Namespace) -> dict:
    """Build the index at ``url``, serve it, and load both endpoints in turn."""
    from protocol.anvil import free_port

    t = time.perf_counter()
    build_index(url, args.jobs)
    build_s = time.perf_counter() - t
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", url, str(port)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                asyncio.run(connect(port, 1))
                break
            except OSError:
                time.sleep(0.2)
        rng = random.Random(1)
        status_paths = [f"/v1/jobs/{rng.randrange(1, args.jobs + 1)}/status" for _ in range(5000)]
        endpoints = {"status": status_paths, "trivial": ["/bench/trivial"]}
        results: dict[str, dict] = {}
        for name, paths in endpoints.items():
            asyncio.run(closed_loop(port, paths, 1.0))  # warm-up
            results[name] = {
                "open_loop": asyncio.run(open_loop(port, paths, args.rate, args.seconds)),
                "closed_loop": asyncio.run(closed_loop(port, paths, args.seconds / 2)),
            }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    st, tr = results["status"], results["trivial"]
    return {
        "index_build_s": round(build_s, 2),
        "endpoints": results,
        "ratios": {
            "status_vs_trivial_max_rps": round(
                st["closed_loop"]["rps"] / tr["closed_loop"]["rps"], 3
            ),
            "status_vs_trivial_p99": round(
                st["open_loop"]["p99_ms"] / tr["open_loop"]["p99_ms"], 3
            ),
        },
        "target_met": st["open_loop"]["p99_ms"] <= TARGET_P99_MS and args.rate >= TARGET_RATE,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=TARGET_RATE)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--databases", default="sqlite,postgresql", help="comma-separated")
    ap.add_argument("--serve", nargs=2, metavar=("DB", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    from api.pgtemp import PostgresUnavailable, TempPostgres

    per_db: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for database in args.databases.split(","):
        if database == "sqlite":
            tmp = tempfile.mkdtemp(prefix="trainproof-bench-")
            per_db[database] = measure(f"sqlite:///{os.path.join(tmp, 'index.db')}", args)
        elif database == "postgresql":
            try:
                with TempPostgres() as pg:
                    per_db[database] = measure(pg.url, args)
            except PostgresUnavailable as e:
                skipped[database] = str(e)
                print(f"postgresql skipped: {e}")
        else:
            ap.error(f"unknown database {database!r} (sqlite, postgresql)")
    out = {
        "jobs": args.jobs,
        "server": "uvicorn (uvloop, httptools), 1 worker; the load generator shares the 2 cores",
        "databases": per_db,
        "skipped": skipped,
        "target": {
            "p99_ms_at_rps": TARGET_P99_MS,
            "rps": TARGET_RATE,
            "met": bool(per_db) and all(r["target_met"] for r in per_db.values()),
        },
    }
    path = write("api", out)
    table(
        f"status endpoint, {args.jobs} jobs ({path.name})",
        ["database", "endpoint", "target rps", "achieved", "p50 ms", "p99 ms", "max rps"],
        [
            [
                database,
                n,
                str(r["open_loop"]["rate_target"]),
                str(r["open_loop"]["achieved_rps"]),
                str(r["open_loop"]["p50_ms"]),
                str(r["open_loop"]["p99_ms"]),
                str(r["closed_loop"]["rps"]),
            ]
            for database, res in per_db.items()
            for n, r in res["endpoints"].items()
        ],
    )


if __name__ == "__main__":
    main()
