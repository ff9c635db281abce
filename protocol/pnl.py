"""Profit and loss of one agent, from the chain and its own outbox: what operators read.

- **gas**: every transaction this agent's outbox sent (mined or reverted), at the effective
  gas price of its receipt;
- **posted**: the ETH those transactions carried (stakes, bonds, rewards escrowed);
- **returned** and **won**: ``Credited`` events to this agent, split into the agent's own
  money coming back (stake, bond, escrowed reward) and what it earned (a reward, a share of
  a slashed stake, a lying challenger's bond);
- **net** = returned + won - posted - gas. Credits are counted when credited; ``withdrawable``
  is what the contract still holds for the agent.

Game outcomes are said in words (``won game 1 at the one-step``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import BaseModel

from protocol.units import eth

#: Credited reasons (TrainProof.vy) that pay back the agent's own money ...
RETURNED = {"bond refund", "reward refund", "expired job"}
#: ... and those that are part own money, part earnings (split by the job's stake / bond).
SPLIT = {"reward and stake": "stake", "bond and stake share": "bond"}


class PnL(BaseModel):
    txs: int = 0
    gas: int = 0
    posted: int = 0
    returned: int = 0
    won: int = 0
    withdrawable: int = 0

    @property
    def net(self) -> int:
        return self.returned + self.won - self.posted - self.gas

    def line(self) -> str:
        sign = "+" if self.net >= 0 else ""
        return (
            f"gas={eth(self.gas)!r} txs={self.txs} posted={eth(self.posted)!r} "
            f"returned={eth(self.returned)!r} won={eth(self.won)!r} "
            f"net={sign + eth(self.net)!r} withdrawable={eth(self.withdrawable)!r}"
        )


def outcome_words(game_id: int, trainer_won: bool, reason: str, role: str) -> str:
    """``won game 1 at the one-step`` / ``lost game 2: the trainer's clock ran out``."""
    mine = trainer_won if role == "prover" else not trainer_won
    how = {
        "one-step": "at the one-step (the contract computed the float32 operation)",
        "trainer timeout": "on time: the trainer's clock ran out",
        "challenger timeout": "on time: the challenger's clock ran out",
        "abandoned": "without a verdict: the job was rejected in another game (bond refunded)",
    }.get(reason, f"at the op level ({reason})")
    if reason == "abandoned":
        return f"game {game_id} ended {how}"
    return f"{'won' if mine else 'lost'} game {game_id} {how}"


class Ledger:
    """Reads an agent's P&L; per-transaction figures are cached in its state file."""

    def __init__(self, agent: Any, role: str) -> None:
        self.agent = agent
        self.role = role
        self._reported: int | None = None

    def _tx(self, tx_hash: str) -> tuple[int, int]:
        """(value carried if it succeeded, fee paid) of one of this agent's transactions."""
        key = f"pnl_tx:{tx_hash}"
        cached = self.agent.db.get(key)
        if cached is not None:
            value, fee = json.loads(cached)
            return int(value), int(fee)
        w3 = self.agent.w3
        receipt = w3.eth.get_transaction_receipt(tx_hash)
        tx = w3.eth.get_transaction(tx_hash)
        price = int(receipt.get("effectiveGasPrice") or tx.get("gasPrice") or 0)
        fee = int(receipt["gasUsed"]) * price
        value = int(tx["value"]) if int(receipt["status"]) == 1 else 0
        self.agent.db.put(key, json.dumps([value, fee]))
        return value, fee

    def totals(self) -> PnL:
        out = PnL()
        rows = self.agent.db.conn.execute(
            "SELECT hash FROM outbox WHERE status IN ('mined', 'failed')"
        ).fetchall()
        for (tx_hash,) in rows:
            value, fee = self._tx(str(tx_hash))
            out.txs += 1
            out.gas += fee
            out.posted += value
        market = self.agent.market
        for log in market.contract.events.Credited.get_logs(
            from_block=market.start_block, argument_filters={"account": self.agent.address}
        ):
            amount, reason = int(log["args"]["amount"]), str(log["args"]["reason"])
            if reason in SPLIT:
                own = min(amount, self._own_part(log, SPLIT[reason]))
                out.returned += own
                out.won += amount - own
            elif reason in RETURNED:
                out.returned += amount
            else:  # "challenger bond": a lying challenger's bond, paid to the trainer
                out.won += amount
        out.withdrawable = market.credits(self.agent.address)
        return out

    def _own_part(self, log: Any, what: str) -> int:
        """The stake (finalize) or bond (settle) inside a split credit, from its transaction."""
        market = self.agent.market
        tx = self.agent.w3.eth.get_transaction(log["transactionHash"])
        fn, args = market.contract.decode_function_input(tx["input"])
        if fn.fn_name == "finalize":
            return int(market.job(int(args["job_id"])).spec.stake)
        if fn.fn_name == "settle":
            g = market.game(int(args["game_id"]))
            return int(market.job(g.job_id).spec.bond)
        return 0

    def report(self, log: logging.Logger, final: bool = False) -> PnL | None:
        """Log the P&L line when it changed (always when ``final``)."""
        (sent,) = self.agent.db.conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE status IN ('mined', 'failed')"
        ).fetchone()
        if not final and sent == self._reported:
            return None  # nothing sent since the last line: nothing it did changed the P&L
        totals = self.totals()
        self._reported = int(sent)
        event = "summary" if final else "pnl"
        log.info("event=%s role=%s address=%s %s", event, self.role, self.agent.address,
                 totals.line())  # fmt: skip
        return totals

    def outcomes(self, game_ids: list[int]) -> list[str]:
        """Each resolved game of ``game_ids`` in words."""
        market = self.agent.market
        words = []
        for log in market.contract.events.GameResolved.get_logs(from_block=market.start_block):
            gid = int(log["args"]["game_id"])
            if gid in game_ids:
                args = log["args"]
                trainer_won, reason = bool(args["trainer_won"]), str(args["reason"])
                words.append(outcome_words(gid, trainer_won, reason, self.role))
        return words
