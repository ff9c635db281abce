"""What the prover and challenger services share: connecting, signing, the state file.

An agent is one account acting on one TrainProof deployment through plain JSON-RPC; every
transaction goes through its :class:`~protocol.outbox.Outbox` (crash-safe, one transaction
per intent), and everything it must remember lives in its SQLite file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from protocol.anvil import DEFAULT_MNEMONIC
from protocol.chain import Deployment
from protocol.errors import TrainproofError
from protocol.market import Web3Market
from protocol.outbox import Outbox, OutboxError, StateDB
from protocol.units import eth


class AgentConfig(BaseModel):
    """Where an agent acts and who it is."""

    rpc: str = Field(description="EVM JSON-RPC URL")
    deployment: Path = Field(description="deployment file written by `trainproof deploy`")
    db: Path = Field(description="the agent's SQLite state file")
    key_env: str | None = Field(None, description="environment variable holding a hex private key")
    test_account: int | None = Field(
        None, ge=0, lt=20, description="local dev chains only: account N of the test mnemonic"
    )
    poll: float = Field(0.5, gt=0, description="seconds between polls of the chain")


class AgentError(TrainproofError):
    """An agent is misconfigured."""


#: Longest wait between two tries of a node that does not answer.
NODE_MAX_BACKOFF_S = 30.0


def is_transient(e: BaseException) -> bool:
    """Whether ``e`` is the node (or the network to it) failing, not this program: a refused
    or dropped connection, a timeout, a transaction not mined in time. Worth retrying."""
    import requests
    from web3.exceptions import ProviderConnectionError, TimeExhausted

    return isinstance(
        e,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | ProviderConnectionError
        | TimeExhausted
        | OutboxError
        | ConnectionError
        | TimeoutError,
    )


def poll_forever(
    step: Callable[[], Any],
    poll: float,
    log: logging.Logger,
    rpc: str,
    done: Callable[[Any], bool] = lambda _: False,
    max_polls: int | None = None,
) -> Any:
    """Call ``step`` every ``poll`` seconds until ``done(result)`` (or ``max_polls``); while
    the node is unreachable, wait with exponential backoff and try again. Nothing is lost:
    the state lives in the state file and on the chain."""
    polls, failures, result = 0, 0, None
    while max_polls is None or polls < max_polls:
        polls += 1
        try:
            result = step()
        except Exception as e:
            if not is_transient(e):
                raise
            failures += 1
            delay = min(NODE_MAX_BACKOFF_S, poll * 2**failures)
            log.warning("event=node_unreachable rpc=%s tries=%d retry_in_s=%.1f why=%r "
                        "note=%s", rpc, failures, delay, f"{type(e).__name__}: {str(e)[:160]}",
                        "state kept; retrying")  # fmt: skip
            time.sleep(delay)
            continue
        if failures:
            log.warning("event=node_back rpc=%s after_tries=%d", rpc, failures)
            failures = 0
        if done(result):
            return result
        time.sleep(poll)
    return result


def setup_logging(name: str) -> logging.Logger:
    """Structured ``key=value`` lines on stderr."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return logging.getLogger(f"trainproof.{name}")


def load_account(cfg: AgentConfig) -> Any:
    from eth_account import Account

    if cfg.key_env is not None:
        key = os.environ.get(cfg.key_env)
        if not key:
            raise AgentError(f"environment variable {cfg.key_env} holds no private key")
        return Account.from_key(key)
    if cfg.test_account is not None:
        Account.enable_unaudited_hdwallet_features()
        return Account.from_mnemonic(
            DEFAULT_MNEMONIC, account_path=f"m/44'/60'/0'/0/{cfg.test_account}"
        )
    raise AgentError("say who signs: --key-env NAME (a hex private key) or --test-account N")


class Agent:
    """A connected, signing agent with its state file."""

    def __init__(self, cfg: AgentConfig) -> None:
        from web3 import Web3

        self.cfg = cfg
        deployment = Deployment.load(cfg.deployment)
        self.w3 = Web3(Web3.HTTPProvider(cfg.rpc, request_kwargs={"timeout": 30}))
        if not self.w3.is_connected():
            raise AgentError(
                f"no EVM node answers at {cfg.rpc}: check --rpc (e.g. http://127.0.0.1:8545) "
                "and that the node is running"
            )
        self.chain_id = int(self.w3.eth.chain_id)
        if deployment.chain_id != self.chain_id:
            raise AgentError(
                f"{cfg.deployment} is for chain {deployment.chain_id}, the node is chain "
                f"{self.chain_id}: pass the deployment file of this chain or the RPC of that one"
            )
        address = deployment.contracts.get("TrainProof")
        if not address:
            raise AgentError(f"{cfg.deployment} names no TrainProof address: run trainproof deploy")
        self.code_size = check_code(self.w3, address, cfg.deployment)
        self.deployment = deployment
        self.account = load_account(cfg)
        self.db = StateDB(cfg.db)
        self.outbox = Outbox(self.db, self.w3, self.account)
        self.market = Web3Market(self.w3, address, self.outbox, start_block=deployment.block)
        self._retries: dict[str, tuple[int, float]] = {}

    def send(
        self, log: logging.Logger, fn: str, *args: Any, value: int = 0, key: str
    ) -> Any | None:
        """``market.transact`` that says so, loudly, when the transaction does not go through
        and holds the retry back with exponential backoff (the caller asks again at its next
        poll, as long as the chain still needs it). Returns the receipt summary on success."""
        tries, due = self._retries.get(key, (0, 0.0))
        if time.monotonic() < due:
            return None
        why = "the node refused it or it would revert now (gas estimation failed)"
        try:
            sent = self.market.transact(fn, *args, value=value, key=key)
        except Exception as e:
            if not is_transient(e):
                raise
            sent, why = None, f"{type(e).__name__}: {str(e)[:160]}"
        if sent is not None and sent.success:
            if tries:
                log.warning("event=send_landed key=%s after_tries=%d", key, tries)
            self._retries.pop(key, None)
            return sent
        if sent is not None:  # mined and reverted: a new transaction next time
            self.outbox.retire(key)
            why = f"reverted on-chain (transaction {sent.hash})"
        balance = int(self.w3.eth.get_balance(self.address))
        if balance <= value:
            why = (f"balance {eth(balance)} cannot pay {eth(value)} plus gas: fund "
                   f"{self.address}")  # fmt: skip
        tries += 1
        delay = min(NODE_MAX_BACKOFF_S * 2, self.cfg.poll * 2**tries)
        self._retries[key] = (tries, time.monotonic() + delay)
        log.error("event=send_failed key=%s fn=%s tries=%d retry_in_s=%.1f why=%r", key, fn,
                  tries, delay, why)  # fmt: skip
        return None

    def startup_line(self, log: logging.Logger, role: str, watches: str) -> None:
        """The line an operator checks first: who, with what, where, watching what."""
        balance = int(self.w3.eth.get_balance(self.address))
        log.info("event=start role=%s address=%s balance=%r chain_id=%d rpc=%s contract=%s "
                 "code=ok(%d bytes) deployed_at_block=%d head=%d watch=%r state=%s", role,
                 self.address, eth(balance), self.chain_id, self.cfg.rpc, self.market.address,
                 self.code_size, self.deployment.block, self.head(), watches,
                 self.cfg.db)  # fmt: skip
        if balance == 0:
            note = "this account holds 0 ETH: its transactions fail until it is funded"
            log.warning("event=unfunded address=%s note=%r", self.address, note)

    @property
    def address(self) -> str:
        return str(self.account.address)

    def now(self) -> int:
        """The chain's time: the latest block's timestamp."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def head(self) -> int:
        return int(self.w3.eth.block_number)


def check_code(w3: Any, address: str, where: Path | str) -> int:
    """The size of the contract code at ``address``; refuses an address with none (a
    deployment file of another chain, or of a node that was reset)."""
    code = bytes(w3.eth.get_code(w3.to_checksum_address(address)))
    if not code:
        raise AgentError(
            f"no contract code at {address} (from {where}) on this chain: the node was reset "
            "or the file is for another chain; run trainproof deploy again"
        )
    return len(code)
