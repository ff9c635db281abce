"""Gas of the dispute game: per move at each level, the one-step verdict with its proofs,
whole digits-mlp disputes per side, and the trace-bisection arity that minimises total gas.

    .venv/bin/python bench/gas_game.py [--steps 10] [--every 10]

Writes bench/results/gas_game.json and prints tables. All gas is a transaction's gas used
(21,000 base + calldata + execution), the number a player pays for.

1. Real games on anvil (contracts/TrainProof.vy, the reference players of
   replay/dispute/players.py) on the digits-mlp trace with k = --every steps per interval: a trainer
   fault in a MATMUL, a reduction, an elementwise op and a LOAD_BATCH, and a challenger
   lying in a MATMUL. Baseline measured in the same run: a plain ETH transfer (21,000).
2. Arity sweep: TRACE_ARITY compiled at 2, 4, 8, 16 (titanoboa), one reveal + pick round
   each on a synthetic dispute, times the rounds needed for the interval's k*L positions.
   Targets: <= 60,000 per bisection move, <= 150,000 for the one-step verdict with its
   proofs, <= 3,000,000 per side and <= 40 moves for a whole dispute.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import table, write
from protocol.anvil import AnvilNode
from protocol.chain import ChainSettings, connect
from protocol.game import Phase
from protocol.ir import Opcode
from protocol.market import ApeMarket
from protocol.merkle import MerkleTree, leaf_hash
from replay.compile.compiler import compile_train, initial_state
from replay.compile.examples import get_example
from replay.data.dataset import Dataset
from replay.dispute.players import (
    ChallengerPlayer,
    Computation,
    Fault,
    TrainerPlayer,
    job_spec_for,
    play,
)

ROOT = Path(__file__).resolve().parent.parent
BISECTION = {Phase.TRACE_REVEAL, Phase.TRACE_PICK, Phase.CHUNK_REVEAL, Phase.CHUNK_PICK,
             Phase.PARTIAL_REVEAL, Phase.PARTIAL_PICK}  # fmt: skip
STAKE, BOND, REWARD = 10**18, 10**17, 5 * 10**17


def calldata_gas(data: bytes) -> int:
    return sum(4 if b == 0 else 16 for b in data)


def scenarios(program, steps: int) -> list[tuple[str, str, Fault]]:
    def op_of(opcode: Opcode, pick: int = -1) -> int:
        return [j for j, o in enumerate(program.ops) if o.opcode == opcode][pick]

    step = steps // 2 + 1

    def element(opcode: Opcode, element: int, pick: int = -1) -> Fault:
        return Fault(kind="element", step=step, op=op_of(opcode, pick), element=element)

    return [
        ("trainer", "matmul", element(Opcode.MATMUL, 5)),
        ("trainer", "reduce_sum", element(Opcode.REDUCE_SUM, 3, 0)),
        ("trainer", "elementwise (div)", element(Opcode.DIV, 7)),
        ("trainer", "load_batch",
         Fault(kind="wrong-batch", step=step, op=op_of(Opcode.LOAD_BATCH, 0))),
        ("challenger", "matmul", element(Opcode.MATMUL, 9)),
    ]  # fmt: skip


def real_games(steps: int, every: int) -> dict[str, object]:
    ex = get_example("digits-mlp")
    program = compile_train(ex.model)
    dataset = Dataset(ex.dataset)
    init = initial_state(ex.model, program)
    honest = Computation(program, dataset, init, steps, every)
    out: dict[str, object] = {"steps": steps, "every": every, "ops_per_step": len(program.ops)}
    per_phase: dict[str, list[int]] = defaultdict(list)
    games = []
    with AnvilNode() as node, connect(ChainSettings(rpc_url=node.url, provider="foundry")) as ch:
        from ape import chain as ape_chain

        def advance(seconds: int) -> None:
            ape_chain.pending_timestamp += seconds
            ape_chain.mine()

        transfer = ch.test_account(0).transfer(ch.test_account(1), 1)
        out["baseline_transfer_gas"] = int(transfer.gas_used)
        executor = ch.deploy("Executor")
        market = ch.deploy("TrainProof", executor.address)
        requester, trainer_acct, challenger_acct = (ch.test_account(i) for i in (3, 4, 5))
        for liar, where, fault in scenarios(program, steps):
            bad = Computation(program, dataset, init, steps, every, fault=fault)
            trainer_comp, challenger_comp = (bad, honest) if liar == "trainer" else (honest, bad)
            spec = job_spec_for(
                honest, stake=STAKE, bond=BOND, clock=3600, window=7200, train_time=3600
            )
            receipt = market.register_job(spec.as_tuple(), sender=requester, value=REWARD)
            job_id = int(receipt.events[0].job_id)
            market.accept_job(
                job_id, market.jobs(job_id).job_hash, sender=trainer_acct, value=STAKE
            )
            trainer = TrainerPlayer(ApeMarket(market, trainer_acct), trainer_comp, job_id)
            challenger = ChallengerPlayer(
                ApeMarket(market, challenger_acct), challenger_comp, job_id
            )
            commit = trainer.commit()
            committed = trainer_comp.checkpoint_roots()
            interval = challenger.first_bad_interval(committed)
            assert interval is not None
            game_id = challenger.open(committed, interval, BOND)
            result = play(trainer, challenger, game_id, advance)
            settle = market.settle(game_id, sender=requester)
            sides = {"trainer": 0, "challenger": 0}
            for m in result.moves:
                side = "trainer" if m.party == "TrainerPlayer" else "challenger"
                sides[side] += m.gas
                if m.seq >= 0:
                    per_phase[m.phase.name].append(m.gas)
            verdict = [m.gas for m in result.moves if m.phase == Phase.ONE_STEP]
            games.append({
                "liar": liar, "fault_in": where, "fault": fault.model_dump(),
                "trainer_won": result.trainer_won, "moves": len(result.moves),
                "gas_trainer": sides["trainer"], "gas_challenger": sides["challenger"],
                "gas_commit": int(commit.gas_used), "gas_open_dispute": result.moves[0].gas,
                "gas_one_step": verdict[0] if verdict else None, "gas_settle": int(settle.gas_used),
                "decided_at": "timeout" if result.timeouts else result.moves[-1].phase.name,
            })  # fmt: skip
    out["games"] = games
    out["per_phase"] = {
        k: {"median": int(statistics.median(v)), "max": max(v), "n": len(v)}
        for k, v in sorted(per_phase.items())
    }
    return out


def arity_sweep(span: int) -> dict[str, object]:
    """One reveal + pick round per TRACE_ARITY variant, and the total for `span` positions."""
    import boa

    src = (ROOT / "contracts" / "TrainProof.vy").read_text()
    executor = boa.load(str(ROOT / "contracts" / "Executor.vy"))
    out: dict[str, object] = {"span": span}
    for arity in (2, 4, 8, 16):
        variant = src.replace(
            "TRACE_ARITY: public(constant(uint256)) = 8",
            f"TRACE_ARITY: public(constant(uint256)) = {arity}",
        )
        market = boa.loads_partial(variant, filename=str(ROOT / "contracts" / "TrainProof.vy"))
        market = market.deploy(executor.address)
        requester, trainer, challenger = (boa.env.generate_address() for _ in range(3))
        for a in (requester, trainer, challenger):
            boa.env.set_balance(a, 10**21)
        roots = [leaf_hash(bytes([i])) for i in range(3)]  # C_0, C_1, C_2 (synthetic)
        spec = (
            roots[0],
            span,
            roots[1],
            roots[0],
            roots[2],
            2,
            1,
            64,
            STAKE,
            BOND,
            3600,
            7200,
            3600,
        )
        with boa.env.prank(requester):
            job_id = market.register_job(spec, value=REWARD)
        with boa.env.prank(trainer):
            market.accept_job(job_id, market.jobs(job_id).job_hash, value=STAKE)
            market.commit_run(job_id, 0, roots[1:])
        tree = MerkleTree([leaf_hash(r) for r in roots])
        with boa.env.prank(challenger):
            game_id = market.open_dispute(
                job_id, 0, roots[0], list(tree.prove(0).path), roots[1], list(tree.prove(1).path),
                value=BOND,
            )  # fmt: skip
        values = [leaf_hash(i.to_bytes(4, "big")) for i in range(arity - 1)]
        reveal_data = market.reveal.prepare_calldata(game_id, 0, values)
        with boa.env.prank(trainer):
            market.reveal(game_id, 0, values)
        reveal_gas = market._computation.get_gas_used() + 21_000 + calldata_gas(reveal_data)
        pick_data = market.pick.prepare_calldata(game_id, 1, values, 0)
        with boa.env.prank(challenger):
            market.pick(game_id, 1, values, 0)
        pick_gas = market._computation.get_gas_used() + 21_000 + calldata_gas(pick_data)
        rounds = math.ceil(math.log(span, arity) - 1e-9)
        out[str(arity)] = {
            "reveal_gas": reveal_gas, "pick_gas": pick_gas, "rounds": rounds,
            "moves": 2 * rounds, "total_gas": rounds * (reveal_gas + pick_gas),
        }  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=10, help="steps N of the bench job (default 10)")
    ap.add_argument("--every", type=int, default=10, help="steps per checkpoint interval k")
    args = ap.parse_args()
    games = real_games(args.steps, args.every)
    sweep = arity_sweep(args.every * int(games["ops_per_step"]))  # type: ignore[call-overload]
    path = write("gas_game", {
        "real_games": games, "trace_arity_sweep": sweep,
        "targets": {"bisection_move": 60_000, "one_step_with_proofs": 150_000,
                    "per_side": 3_000_000, "moves": 40},
    })  # fmt: skip
    per_phase = games["per_phase"]
    assert isinstance(per_phase, dict)
    table(
        f"gas per move on anvil (digits-mlp, k={args.every}; plain transfer = "
        f"{games['baseline_transfer_gas']:,})",
        ["phase", "level", "median", "max", "n", "target"],
        [[k, Phase[k].level, f"{v['median']:,}", f"{v['max']:,}", str(v["n"]),
          "<= 60,000" if Phase[k] in BISECTION else ("<= 150,000" if k == "ONE_STEP" else "")]
         for k, v in per_phase.items()],
    )  # fmt: skip
    table(
        "whole disputes (gas per side incl. opening/commit-free; target <= 3,000,000, <= 40 moves)",
        ["liar", "fault in", "winner", "moves", "trainer gas", "challenger gas", "decided at"],
        [[g["liar"], g["fault_in"], "trainer" if g["trainer_won"] else "challenger",
          str(g["moves"]), f"{g['gas_trainer']:,}", f"{g['gas_challenger']:,}", g["decided_at"]]
         for g in games["games"]],  # type: ignore[union-attr]
    )  # fmt: skip
    table(
        f"trace bisection arity over {sweep['span']} positions (one round = reveal + pick)",
        ["arity", "reveal gas", "pick gas", "rounds", "total gas"],
        [[a, f"{v['reveal_gas']:,}", f"{v['pick_gas']:,}", str(v["rounds"]), f"{v['total_gas']:,}"]
         for a, v in sweep.items() if a != "span"],  # type: ignore[union-attr]
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
