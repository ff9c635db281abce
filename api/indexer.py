"""Follow TrainProof's events over plain JSON-RPC (``eth_getLogs`` by address and block range).

- Indexes up to ``head - confirmations``; each range is one DB transaction together with the
  new tip, so a crash resumes where it stopped and re-running a range changes nothing.
- Reorgs: the hashes of the indexed tip and of every block with logs are kept; each sync
  compares the newest ones with the chain, and on a mismatch deletes the events of the forked
  blocks, re-derives the jobs they touched from their remaining events, and re-reads. A range
  whose logs name other block hashes than the blocks read next (a reorg between the two reads)
  is abandoned whole (``ChainMoved``) and read again by the next sync.
- After each range the games it touched are refreshed from the ``game(id)`` view at the new
  tip (clocks, bounds, element), so a game row always equals the chain's view.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eth_utils import event_abi_to_log_topic, to_checksum_address
from hexbytes import HexBytes
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker
from web3 import Web3
from web3._utils.events import get_event_data

from api.bundles import restore_checks, saved_checks
from api.db import Block, Change, Checkpoint, Event, Game, Job, Meta, Move
from api.derive import apply, verification_status
from protocol.market import trainproof_abi

log = logging.getLogger("trainproof.api.indexer")

#: Longest wait between two syncs while the node does not answer.
NODE_MAX_BACKOFF_S = 30.0

GAME_VIEW_FIELDS = (
    "job_id",
    "challenger",
    "phase",
    "seq",
    "interval",
    "lo",
    "hi",
    "v_lo",
    "v_hi",
    "pending",
    "step",
    "op",
    "pre_root",
    "desc_hash",
    "numel",
    "node",
    "node_lo",
    "node_hi",
    "element",
    "trainer_clock",
    "challenger_clock",
    "last_move",
    "settled",
    "deadline",
    "live",
)


#: The view fields a ``games`` row mirrors as integers (``settled`` is the one boolean).
GAME_ROW_FIELDS = (
    "phase",
    "seq",
    "lo",
    "hi",
    "step",
    "op",
    "numel",
    "node_lo",
    "node_hi",
    "element",
    "trainer_clock",
    "challenger_clock",
    "last_move",
)


def _plain(value: Any, abi_type: dict[str, Any]) -> Any:
    t = abi_type["type"]
    if t.startswith("tuple"):
        if t.endswith("]"):
            inner = {**abi_type, "type": t[: t.rindex("[")]}
            return [_plain(v, inner) for v in value]
        comps = abi_type["components"]
        if isinstance(value, Mapping):
            return {c["name"]: _plain(value[c["name"]], c) for c in comps}
        return {c["name"]: _plain(v, c) for c, v in zip(comps, value, strict=True)}
    if t.endswith("]"):
        inner = {**abi_type, "type": t[: t.rindex("[")]}
        return [_plain(v, inner) for v in value]
    if t == "address":
        return to_checksum_address(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return value


class NodeUnavailable(RuntimeError):
    """The node did not answer as a node should; nothing was changed (the next sync retries)."""


class ChainMoved(RuntimeError):
    """The chain reorganised while a range was being read; nothing of it was stored (the next
    sync reads it again)."""


@dataclass
class SyncResult:
    tip: int
    events: int
    rolled_back_to: int | None


class Indexer:
    """Indexes one TrainProof deployment into the database behind ``sessions``."""

    def __init__(
        self,
        w3: Web3,
        address: str,
        sessions: sessionmaker,
        *,
        start_block: int = 0,
        confirmations: int = 0,
        batch_size: int = 2000,
        abi: list[dict[str, Any]] | None = None,
    ) -> None:
        self.w3 = w3
        self.address = to_checksum_address(address)
        self.sessions = sessions
        self.start_block = start_block
        self.confirmations = confirmations
        self.batch_size = batch_size
        self.abi = abi or trainproof_abi()
        self.contract = w3.eth.contract(address=self.address, abi=self.abi)
        self._events = {
            "0x" + event_abi_to_log_topic(e).hex(): e for e in self.abi if e["type"] == "event"
        }

    # ------------------------------------------------------------------ public

    def tip(self, s: Session | None = None) -> int:
        if s is None:
            with self.sessions() as s2:
                return self.tip(s2)
        row = s.get(Meta, "tip")
        return int(row.value) if row else self.start_block - 1

    def sync(self, max_ranges: int | None = None) -> SyncResult:
        """Index everything confirmed; returns the new tip. Safe to call repeatedly."""
        rolled = self._check_reorg()
        head = int(self.w3.eth.block_number) - self.confirmations
        count, ranges = 0, 0
        while True:
            with self.sessions.begin() as s:
                tip = self.tip(s)
                if tip >= head or (max_ranges is not None and ranges >= max_ranges):
                    return SyncResult(tip, count, rolled)
                to = min(head, tip + self.batch_size)
                count += self._index_range(s, tip + 1, to)
                ranges += 1

    def run_forever(self, interval: float = 1.0, stop: Any = None) -> None:
        """Poll the chain every ``interval`` seconds until ``stop`` (a threading.Event) is set.
        While the node does not answer, the index is kept and served, and the node is tried
        again with backoff."""
        failures = 0
        while stop is None or not stop.is_set():
            wait = interval
            try:
                result = self.sync()
                if failures:
                    log.warning("node back after %d failed syncs; tip=%d", failures, result.tip)
                failures = 0
                if result.events or result.rolled_back_to is not None:
                    log.info(
                        "indexed tip=%d events=%d rolled_back_to=%s",
                        result.tip,
                        result.events,
                        result.rolled_back_to,
                    )
            except ChainMoved as e:
                log.warning("reorg during sync, reading again: %s", e)
            except Exception as e:
                from protocol.agent import is_transient

                if not (is_transient(e) or isinstance(e, NodeUnavailable)):
                    log.exception("sync failed; retrying")
                else:
                    failures += 1
                    wait = min(NODE_MAX_BACKOFF_S, interval * 2**failures)
                    log.warning(
                        "node unreachable: keeping the index (tip=%d), retrying in %.1fs "
                        "(try %d): %s",
                        self.tip(), wait, failures, f"{type(e).__name__}: {str(e)[:160]}",
                    )  # fmt: skip
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)

    # ------------------------------------------------------------------ ranges

    def _decode(self, raw: Any) -> tuple[str, dict[str, Any]] | None:
        topic0 = "0x" + HexBytes(raw["topics"][0]).hex().removeprefix("0x") if raw["topics"] else ""
        abi = self._events.get(topic0)
        if abi is None:
            return None
        decoded = get_event_data(self.w3.codec, abi, raw)
        inputs = {i["name"]: i for i in abi["inputs"]}
        return abi["name"], {k: _plain(v, inputs[k]) for k, v in decoded["args"].items()}

    def _index_range(self, s: Session, lo: int, hi: int) -> int:
        logs = self.w3.eth.get_logs({"address": self.address, "fromBlock": lo, "toBlock": hi})
        blocks: dict[int, tuple[str, int]] = {}
        for n in sorted({int(raw["blockNumber"]) for raw in logs} | {hi}):
            b = self.w3.eth.get_block(n)
            blocks[n] = ("0x" + bytes(b["hash"]).hex(), int(b["timestamp"]))
        for raw in logs:  # a reorg between the two reads: the logs are not of these blocks
            if "0x" + bytes(raw["blockHash"]).hex() != blocks[int(raw["blockNumber"])][0]:
                raise ChainMoved(
                    f"block {int(raw['blockNumber'])} changed while range {lo}..{hi} was read"
                )
        seen = {
            (b, i)
            for b, i in s.execute(
                select(Event.block_number, Event.log_index).where(
                    Event.block_number >= lo, Event.block_number <= hi
                )
            )
        }
        touched_games: set[int] = set()
        count = 0
        for raw in sorted(logs, key=lambda r: (int(r["blockNumber"]), int(r["logIndex"]))):
            n, li = int(raw["blockNumber"]), int(raw["logIndex"])
            if (n, li) in seen or raw.get("removed"):
                continue
            decoded = self._decode(raw)
            if decoded is None:
                continue
            name, data = decoded
            game_id = data.get("game_id")
            job_id = data.get("job_id")
            if job_id is None and game_id is not None:
                job_id = s.scalar(select(Game.job_id).where(Game.id == game_id))
            ev = Event(
                block_number=n,
                log_index=li,
                tx_hash="0x" + bytes(raw["transactionHash"]).hex(),
                timestamp=blocks[n][1],
                name=name,
                job_id=job_id,
                game_id=game_id,
                account=data.get("account"),
                data=data,
            )
            s.add(ev)
            s.flush()
            apply(s, ev)
            if game_id is not None:
                touched_games.add(int(game_id))
            elif name == "Credited":  # `settle` logs no game id: re-read unsettled verdicts
                touched_games.update(
                    s.scalars(
                        select(Game.id).where(
                            Game.resolved_at.is_not(None), Game.settled.is_(False)
                        )
                    )
                )
            count += 1
        for n, (h, ts) in blocks.items():
            s.merge(Block(number=n, hash=h, timestamp=ts))
        self._refresh_games(s, touched_games, hi)
        s.merge(Meta(key="tip", value=str(hi)))
        # keep the hashes reorg checks need, not every block forever
        s.execute(delete(Block).where(Block.number < hi - 10_000, Block.number != hi))
        if count:
            log.info("range lo=%d hi=%d events=%d games=%d", lo, hi, count, len(touched_games))
        return count

    def _refresh_games(self, s: Session, game_ids: Iterable[int], block: int) -> None:
        for gid in sorted(game_ids):
            game = s.get(Game, gid)
            if game is None:
                continue
            raw = self.contract.functions.game(gid).call(block_identifier=block)
            view = dict(zip(GAME_VIEW_FIELDS, raw, strict=True))
            for f in GAME_ROW_FIELDS:
                setattr(game, f, int(view[f]))
            game.settled = bool(view["settled"])

    # ------------------------------------------------------------------ reorgs

    def _check_reorg(self) -> int | None:
        with self.sessions() as s:
            stored = list(s.scalars(select(Block).order_by(Block.number.desc()).limit(256)))
        if not stored:
            return None
        fork: int | None = None
        for i, b in enumerate(stored):
            h = self._hash_at(b.number)
            if h == b.hash:
                if i == 0:
                    return None
                fork = b.number
                break
        if fork is None:
            fork = stored[-1].number - 1 if len(stored) == 256 else self.start_block - 1
        self.rollback(fork)
        return fork

    def _hash_at(self, number: int) -> str | None:
        """The chain's hash at height ``number``; None only when the node says the chain is
        shorter now. Any other failure (the node down, a timeout) raises: a block that cannot
        be read is no evidence of a reorg, and the index is kept."""
        from web3.exceptions import BlockNotFound

        try:
            return "0x" + bytes(self.w3.eth.get_block(number)["hash"]).hex()
        except BlockNotFound:
            head = int(self.w3.eth.block_number)  # raises too when the node went away
            if head < number:
                return None  # proven: the chain is shorter than this block now
            raise NodeUnavailable(
                f"the node has block {head} but cannot give block {number}"
            ) from None

    def rollback(self, to_block: int) -> None:
        """Forget everything after ``to_block`` and re-derive what it touched."""
        with self.sessions.begin() as s:
            job_ids = set(
                s.scalars(select(Event.job_id).where(Event.block_number > to_block)).all()
            ) - {None}
            checks = saved_checks(s, job_ids)  # bundle verdicts outlive the re-derivation
            s.execute(delete(Event).where(Event.block_number > to_block))
            s.execute(delete(Block).where(Block.number > to_block))
            s.merge(Meta(key="tip", value=str(to_block)))
            game_ids = list(s.scalars(select(Game.id).where(Game.job_id.in_(job_ids))))
            s.execute(delete(Move).where(Move.game_id.in_(game_ids)))
            s.execute(delete(Game).where(Game.id.in_(game_ids)))
            s.execute(delete(Checkpoint).where(Checkpoint.job_id.in_(job_ids)))
            s.execute(delete(Job).where(Job.id.in_(job_ids)))
            s.flush()
            replay = s.scalars(
                select(Event)
                .where(Event.job_id.in_(job_ids))
                .order_by(Event.block_number, Event.log_index)
            ).all()
            for ev in replay:
                apply(s, ev, emit=False)
            restore_checks(s, checks)
            touched = set(s.scalars(select(Game.id).where(Game.job_id.in_(job_ids))))
            if to_block >= self.start_block:
                self._refresh_games(s, touched, to_block)
            for jid in sorted(job_ids):
                job = s.get(Job, jid)
                data = {"status": verification_status(job.status, job.open_games) if job else None}
                s.add(
                    Change(kind="reorg", job_id=jid, game_id=None, block_number=to_block, data=data)
                )
        log.warning("reorg rolled_back_to=%d jobs=%s", to_block, sorted(job_ids))
