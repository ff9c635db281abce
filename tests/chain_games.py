"""Whole dispute games on a real chain (ape's local network and anvil), shared by the game
tests of each program (tests/test_game_full.py: digits-mlp; tests/test_game_ops.py: the IR v1
ops; their ``market`` fixture is in conftest.py): moving the chain's clock, and one job
played to its settlement by the reference players."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.market import ApeMarket
from replay.dispute.players import (
    ChallengerPlayer,
    Computation,
    GameResult,
    TrainerPlayer,
    job_spec_for,
    play,
)

STAKE, BOND, REWARD = 10**18, 10**17, 5 * 10**17
CLOCK, WINDOW, TRAIN_TIME = 3600, 7200, 3600
MAX_MOVES = 40


def advance(seconds: int) -> None:
    from ape import chain as ape_chain

    ape_chain.pending_timestamp += seconds
    ape_chain.mine()


def new_job(chain, market, honest: Computation) -> tuple[int, Any, Any, Any]:
    """Register ``honest``'s job and accept it by its hash: (job id, requester, trainer,
    challenger)."""
    requester, trainer, challenger = (chain.test_account(i) for i in (3, 4, 5))
    spec = job_spec_for(
        honest, stake=STAKE, bond=BOND, clock=CLOCK, window=WINDOW, train_time=TRAIN_TIME
    )
    receipt = market.register_job(spec.as_tuple(), sender=requester, value=REWARD)
    job_id = int(receipt.events[0].job_id)
    market.accept_job(job_id, market.jobs(job_id).job_hash, sender=trainer, value=STAKE)
    return job_id, requester, trainer, challenger


@dataclass
class Dispute:
    result: GameResult
    job_id: int
    paid: dict[Any, int]  # credits each party gained at settle
    requester: Any
    trainer: Any
    challenger: Any


def run_dispute(
    chain, market, honest: Computation, trainer_comp: Computation, challenger_comp: Computation
) -> Dispute:
    """The trainer commits ``trainer_comp``'s run of ``honest``'s job; the challenger disputes
    the first interval its own computation disagrees with; both play to the verdict, which
    is settled (the contract stays solvent)."""
    job_id, requester, trainer_acct, challenger_acct = new_job(chain, market, honest)
    trainer = TrainerPlayer(ApeMarket(market, trainer_acct), trainer_comp, job_id)
    challenger = ChallengerPlayer(ApeMarket(market, challenger_acct), challenger_comp, job_id)
    trainer.commit()
    committed = trainer_comp.checkpoint_roots()
    interval = challenger.first_bad_interval(committed)
    assert interval is not None, "the challenger's computation must disagree somewhere"
    game_id = challenger.open(committed, interval, BOND)
    result = play(trainer, challenger, game_id, advance)
    assert len(result.moves) <= MAX_MOVES
    before = {a: market.credits(a) for a in (trainer_acct, challenger_acct, requester)}
    market.settle(game_id, sender=requester)
    paid = {a: market.credits(a) - before[a] for a in before}
    assert chain.provider.get_balance(market.address) == market.liabilities()
    return Dispute(result, job_id, paid, requester, trainer_acct, challenger_acct)
