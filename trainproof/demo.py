"""``make demo``: the whole protocol on a real local chain, in one process.

1. start anvil (npm ``@foundry-rs/anvil``) on a free loopback port; deploy the one-step
   Executor and the TrainProof market;
2. a requester registers two digits-mlp training jobs (escrowing rewards); two trainers
   accept them with stakes: one trains honestly, one cheats — one element of one MATMUL of
   one step is wrong, and everything after it follows from the wrong value;
3. both commit their checkpoint roots; a challenger replays both runs bit-exactly, finds
   the cheat's first wrong interval and disputes it with a bond;
4. the dispute is played move by move, live, down the levels — trace, op, chunk, element,
   partial sums — to the one float32 operation the contract executes itself;
5. the window passes: the honest job finalises, the cheat's stake is slashed, everybody
   withdraws; a summary table shows the money and the gas.

The prover and challenger *services* (separate processes, crash-safe) are the next step;
this demo drives the same reference players (``replay.dispute``) directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from protocol.anvil import AnvilNode
from protocol.chain import ChainSettings, connect
from protocol.game import JobStatus, Phase
from protocol.ir import Opcode
from protocol.market import ApeMarket
from replay.compiler import compile_train, initial_state
from replay.dataset import Dataset
from replay.dispute import (
    ChallengerPlayer,
    Computation,
    Fault,
    Player,
    TrainerPlayer,
    job_spec_for,
)
from replay.examples import get_example

console = Console()

STEPS, EVERY = 10, 5
ETH = 10**18
STAKE, BOND, REWARD = 2 * ETH, ETH // 5, ETH
CLOCK, WINDOW, TRAIN_TIME = 3600, 7200, 3600


def eth(wei: int) -> str:
    return f"{wei / ETH:.2f} ETH"


def run_demo(rpc_url: str | None = None, seed: int = 7) -> int:
    t0 = time.monotonic()
    with ExitStack() as stack:
        if rpc_url is None:
            with console.status("starting anvil on a free loopback port"):
                node = stack.enter_context(AnvilNode())
            rpc_url = node.url
            console.print(f"[green]✓[/] anvil running at {rpc_url}")
            settings = ChainSettings(rpc_url=rpc_url, provider="foundry")
        else:
            settings = ChainSettings(rpc_url=rpc_url)
        with console.status("compiling contracts and connecting"):
            chain = stack.enter_context(connect(settings))
            from ape import chain as ape_chain

            executor = chain.deploy("Executor")
            market = chain.deploy("TrainProof", executor.address)
        console.print(
            f"[green]✓[/] TrainProof deployed at {market.address} (executor {executor.address})"
        )
        requester, honest_acct, cheat_acct, challenger_acct = (
            chain.test_account(i) for i in range(4)
        )

        def advance(seconds: int) -> None:
            ape_chain.pending_timestamp += seconds
            ape_chain.mine()

        # ---- two runs of digits-mlp: one honest, one with a fault
        ex = get_example("digits-mlp")
        program = compile_train(ex.model)
        dataset = Dataset(ex.dataset)
        init = initial_state(ex.model, program)
        matmuls = [j for j, o in enumerate(program.ops) if o.opcode == Opcode.MATMUL]
        fault = Fault(kind="element", step=EVERY + seed % EVERY, op=matmuls[-1], element=seed)
        honest = Computation(program, dataset, init, STEPS, EVERY)
        cheat = Computation(program, dataset, init, STEPS, EVERY, fault=fault)
        with console.status(f"training digits-mlp twice: {STEPS} canonical steps each"):
            honest_roots, cheat_roots = honest.checkpoint_roots(), cheat.checkpoint_roots()
        console.print(
            f"[green]✓[/] trained: {len(program.ops)} ops per step, {len(program.slots)} slots; "
            f"the cheat perturbed element {fault.element} of op {fault.op} (MATMUL) "
            f"in step {fault.step}"
        )

        spec = job_spec_for(
            honest, stake=STAKE, bond=BOND, clock=CLOCK, window=WINDOW, train_time=TRAIN_TIME
        )
        jobs = {}
        for name, acct, comp in (("honest", honest_acct, honest), ("cheat", cheat_acct, cheat)):
            receipt = market.register_job(spec.as_tuple(), sender=requester, value=REWARD)
            job_id = int(receipt.events[0].job_id)
            market.accept_job(job_id, sender=acct, value=STAKE)
            trainer = TrainerPlayer(ApeMarket(market, acct), comp, job_id)
            commit = trainer.commit()
            jobs[name] = (job_id, trainer)
            console.print(
                f"[green]✓[/] job {job_id}: {name} trainer {acct.address[:10]}… staked "
                f"{eth(STAKE)} and committed {STEPS // EVERY} checkpoint roots "
                f"({commit.gas_used:,} gas)"
            )

        # ---- the challenger replays both commitments
        disputes = []
        for name, (job_id, _trainer) in jobs.items():
            committed = honest_roots if name == "honest" else cheat_roots
            challenger = ChallengerPlayer(ApeMarket(market, challenger_acct), honest, job_id)
            bad = challenger.first_bad_interval(committed)
            if bad is None:
                console.print(
                    f"[green]✓[/] challenger replayed job {job_id}: every checkpoint matches"
                )
                continue
            game_id = challenger.open(committed, bad, BOND)
            console.print(
                f"[yellow]![/] challenger replayed job {job_id}: checkpoint {bad + 1} differs "
                f"(steps {bad * EVERY}..{(bad + 1) * EVERY}) → dispute {game_id}, bond {eth(BOND)}"
            )
            disputes.append((job_id, game_id, _trainer, challenger))

        # ---- play every dispute live
        for _job_id, game_id, trainer, challenger in disputes:
            play_live(market, game_id, trainer, challenger, advance)

        # ---- settle, finalise, withdraw
        advance(WINDOW + 1)
        for _, game_id, _, _ in disputes:
            market.settle(game_id, sender=requester)
        for job_id, _ in jobs.values():
            if market.jobs(job_id).status == JobStatus.COMMITTED:
                market.finalize(job_id, sender=requester)
        credits = {who: market.credits(acct) for who, acct in
                   (("requester", requester), ("honest trainer", honest_acct),
                    ("cheating trainer", cheat_acct), ("challenger", challenger_acct))}  # fmt: skip
        for acct in (requester, honest_acct, cheat_acct, challenger_acct):
            if market.credits(acct):
                market.withdraw(sender=acct)
        solvent = chain.provider.get_balance(market.address) == market.liabilities()
        summary(market, jobs, disputes, credits, solvent, time.monotonic() - t0)
        if not solvent:
            return 1
    console.print("[green]✓[/] anvil stopped")
    return 0


def play_live(
    market: Any,
    game_id: int,
    trainer: Player,
    challenger: Player,
    advance: Callable[[int], None],
) -> None:
    table = Table(title=f"dispute {game_id}: live")
    for col in ("move", "by", "level", "phase", "range", "gas"):
        table.add_column(col)
    with Live(table, console=console, refresh_per_second=8):
        while True:
            g = challenger.market.game(game_id)
            if g.phase.over:
                break
            player = trainer if g.phase.trainer_moves else challenger
            before = g
            if player.move(game_id) is None:
                advance((g.trainer_clock if g.phase.trainer_moves else g.challenger_clock) + 1)
                challenger.market.transact("timeout", game_id, key=f"timeout:{game_id}")
                table.add_row(str(before.seq), "—", before.phase.level, "timeout", "", "")
                continue
            move = player.moves[-1]
            span = (
                f"ops {before.lo}..{before.hi}" if before.phase.level == "trace"
                else f"chunks {before.node_lo}..{before.node_hi}" if before.phase.level == "chunk"
                else f"terms {before.lo}..{before.hi}" if before.phase.level == "partial"
                else f"element {before.element}" if before.phase == Phase.ONE_STEP else ""
            )  # fmt: skip
            table.add_row(
                str(before.seq), "trainer" if before.phase.trainer_moves else "challenger",
                before.phase.level, before.phase.name, span, f"{move.gas:,}",
            )  # fmt: skip
    g = challenger.market.game(game_id)
    verdict = "the trainer was right" if g.phase == Phase.TRAINER_WON else "the trainer cheated"
    console.print(
        f"[bold]verdict of dispute {game_id}:[/] {verdict} "
        f"({g.phase.name}, step {g.step}, op {g.op}, element {g.element})"
    )


def summary(
    market: Any,
    jobs: dict[str, tuple[int, TrainerPlayer]],
    disputes: list[tuple[int, int, TrainerPlayer, ChallengerPlayer]],
    credits: dict[str, int],
    solvent: bool,
    wall: float,
) -> None:
    table = Table(title="trainproof demo — summary")
    table.add_column("what")
    table.add_column("result")
    for name, (job_id, _trainer) in jobs.items():
        status = JobStatus(market.jobs(job_id).status).name.lower()
        table.add_row(f"job {job_id} ({name} trainer)", status)
    for job_id, game_id, trainer, challenger in disputes:
        gas = {
            side: sum(m.gas for m in p.moves if m.game_id == game_id)
            for side, p in (("trainer", trainer), ("challenger", challenger))
        }
        n = len([m for m in trainer.moves + challenger.moves if m.game_id == game_id])
        table.add_row(
            f"dispute {game_id} (job {job_id})",
            f"{n} moves; gas trainer {gas['trainer']:,}, challenger {gas['challenger']:,}",
        )
    table.add_row(
        "stake slashed",
        f"{eth(STAKE)}: {eth(STAKE // 2)} to the challenger, {eth(STAKE // 2)} burned",
    )
    for who, wei in credits.items():
        table.add_row(f"paid to {who}", eth(wei))
    table.add_row("contract solvent", "yes (balance = liabilities)" if solvent else "NO")
    table.add_row("wall time", f"{wall:.1f} s")
    console.print(table)
