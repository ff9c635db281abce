"""Crash-safe, idempotent transaction sending.

Every transaction a service sends has an **intent key** (``move:<game>:<seq>``,
``commit:<job>``, …) naming the one thing it does. ``Outbox.send`` signs the transaction
locally with an explicit nonce and **commits the signed bytes to SQLite before
broadcasting them**. Whatever moment the process is killed at, a restart finds one of:

- no row: nothing was ever broadcast — build, sign, record and send afresh;
- a row whose transaction is mined: return its receipt, send nothing;
- a row whose transaction is not mined: broadcast the *same* signed bytes again (same hash,
  same nonce), so the intent can never produce two different transactions.

Nonces come from ``max(chain pending nonce, highest recorded nonce + 1)``; a recorded
transaction whose nonce was taken by another is marked ``superseded`` and its intent is
built afresh only if the caller asks again. A transaction that would revert now (gas
estimation fails) is not sent at all: ``send`` returns None.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from protocol.errors import TrainproofError

log = logging.getLogger("trainproof.outbox")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    nonce INTEGER NOT NULL,
    raw BLOB NOT NULL,
    hash TEXT NOT NULL,
    status TEXT NOT NULL,          -- sent | mined | failed | superseded
    gas_used INTEGER,
    block INTEGER,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class OutboxError(TrainproofError):
    """A transaction could not be sent or confirmed."""


class Sent(BaseModel):
    """What an intent's transaction did."""

    key: str
    hash: str
    gas_used: int
    block: int
    success: bool
    logs: list[Any] = []


class StateDB:
    """A service's SQLite file: the outbox plus a small key-value table of its own progress."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(SCHEMA)

    def get(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
            (key, value, value),
        )

    def delete(self, key: str) -> None:
        self.conn.execute("DELETE FROM kv WHERE key = ?", (key,))

    def items(self, prefix: str) -> list[tuple[str, str]]:
        """The (key, value) pairs whose key starts with ``prefix``, in key order."""
        rows = self.conn.execute(
            "SELECT key, value FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        )
        return [(str(k), str(v)) for k, v in rows]

    def close(self) -> None:
        self.conn.close()


class Outbox:
    """Sends each intent at most once, surviving SIGKILL at any point (see module doc)."""

    def __init__(self, db: StateDB, w3: Any, account: Any, poll: float = 0.2) -> None:
        self.db = db
        self.w3 = w3
        self.account = account
        self.poll = poll

    def status(self, key: str) -> str | None:
        row = self.db.conn.execute("SELECT status FROM outbox WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def send(self, key: str, build: Callable[[dict[str, Any]], dict[str, Any]]) -> Sent | None:
        """Make sure the transaction of intent ``key`` is mined; returns its receipt summary.

        ``build(params)`` returns the transaction dict for the given base params (from,
        nonce, chainId); it may raise to signal the transaction would revert: then nothing
        is sent and None is returned.
        """
        row = self.db.conn.execute(
            "SELECT nonce, raw, hash, status FROM outbox WHERE key = ?", (key,)
        ).fetchone()
        if row is not None and row[3] != "superseded":
            return self._confirm(key, bytes(row[1]), str(row[2]), int(row[0]))
        self._flush_unsent()
        nonce = self._next_nonce()
        params = {"from": self.account.address, "nonce": nonce, "chainId": self.w3.eth.chain_id}
        try:
            tx = build(params)
        except Exception as e:  # web3 raises ContractLogicError and friends on a revert
            log.info("event=skip key=%s reason=%r", key, str(e)[:200])
            return None
        signed = self.account.sign_transaction(tx)
        raw, tx_hash = bytes(signed.raw_transaction), signed.hash.hex()
        self.db.conn.execute(
            "INSERT INTO outbox (key, nonce, raw, hash, status, created) "
            "VALUES (?, ?, ?, ?, 'sent', ?) ON CONFLICT(key) DO UPDATE SET "
            "nonce = excluded.nonce, raw = excluded.raw, hash = excluded.hash, "
            "status = 'sent', created = excluded.created",
            (key, nonce, raw, tx_hash, time.time()),
        )  # committed (autocommit) before anything leaves this process
        log.info("event=signed key=%s nonce=%d hash=%s", key, nonce, tx_hash)
        return self._confirm(key, raw, tx_hash, nonce)

    def retire(self, key: str) -> bool:
        """Free an intent whose transaction was mined and reverted, so that asking for it
        again builds, signs and sends a new one. The reverted transaction stays recorded (as
        ``<key>#reverted<n>``: its gas was spent). True when there was one to retire."""
        row = self.db.conn.execute("SELECT status FROM outbox WHERE key = ?", (key,)).fetchone()
        if row is None or row[0] != "failed":
            return False
        (n,) = self.db.conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE key LIKE ?", (f"{key}#reverted%",)
        ).fetchone()
        self.db.conn.execute(
            "UPDATE outbox SET key = ? WHERE key = ?", (f"{key}#reverted{int(n) + 1}", key)
        )
        log.warning("event=retired key=%s note=%r", key, "reverted on-chain; the next try is new")
        return True

    def _flush_unsent(self) -> None:
        """Broadcast again every recorded transaction the chain has not seen yet (killed
        between recording and broadcasting, and its intent not asked for since): a new
        transaction takes the next nonce, which would wait forever behind the gap."""
        latest = int(self.w3.eth.get_transaction_count(self.account.address, "latest"))
        rows = self.db.conn.execute(
            "SELECT key, raw, hash FROM outbox WHERE status = 'sent' AND nonce >= ? ORDER BY nonce",
            (latest,),
        ).fetchall()
        for key, raw, tx_hash in rows:
            try:
                self.w3.eth.send_raw_transaction(bytes(raw))
                log.info("event=broadcast key=%s hash=%s note=%r", key, tx_hash, "recorded earlier")
            except Exception as e:  # "already known": it is pending, nothing to do
                log.info("event=rebroadcast key=%s note=%r", key, str(e)[:120])

    def _next_nonce(self) -> int:
        chain = int(self.w3.eth.get_transaction_count(self.account.address, "pending"))
        row = self.db.conn.execute(
            "SELECT MAX(nonce) FROM outbox WHERE status IN ('sent', 'mined', 'failed')"
        ).fetchone()
        recorded = -1 if row[0] is None else int(row[0])
        return max(chain, recorded + 1)

    def _receipt(self, tx_hash: str) -> Any | None:
        """The receipt, or None while the node does not know the transaction (yet). A node
        that does not answer is not "not mined": its error goes up, to the agent's backoff."""
        from web3.exceptions import TransactionNotFound

        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None

    def _confirm(
        self, key: str, raw: bytes, tx_hash: str, nonce: int, timeout: float = 120
    ) -> Sent | None:
        receipt = self._receipt(tx_hash)
        if receipt is None:
            if int(self.w3.eth.get_transaction_count(self.account.address, "latest")) > nonce:
                # the nonce is used and not by this transaction: it can never be mined
                self.db.conn.execute(
                    "UPDATE outbox SET status = 'superseded' WHERE key = ?", (key,)
                )
                log.warning("event=superseded key=%s nonce=%d", key, nonce)
                return None
            try:
                self.w3.eth.send_raw_transaction(raw)
                log.info("event=broadcast key=%s hash=%s", key, tx_hash)
            except Exception as e:  # "already known" when it is still pending: fine
                log.info("event=rebroadcast key=%s note=%r", key, str(e)[:120])
            deadline = time.monotonic() + timeout
            while receipt is None:
                if time.monotonic() > deadline:
                    raise OutboxError(
                        f"transaction {tx_hash} of {key} not mined within {timeout:.0f}s"
                    )
                time.sleep(self.poll)
                receipt = self._receipt(tx_hash)
        success = int(receipt["status"]) == 1
        self.db.conn.execute(
            "UPDATE outbox SET status = ?, gas_used = ?, block = ? WHERE key = ?",
            (
                "mined" if success else "failed",
                int(receipt["gasUsed"]),
                int(receipt["blockNumber"]),
                key,
            ),
        )
        log.info("event=mined key=%s success=%s gas=%d", key, success, int(receipt["gasUsed"]))
        return Sent(
            key=key,
            hash=tx_hash,
            gas_used=int(receipt["gasUsed"]),
            block=int(receipt["blockNumber"]),
            success=success,
            logs=list(receipt["logs"]),
        )
