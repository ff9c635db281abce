"""What the prover and challenger services share: connecting, signing, the state file.

An agent is one account acting on one TrainProof deployment through plain JSON-RPC; every
transaction goes through its :class:`~protocol.outbox.Outbox` (crash-safe, one transaction
per intent), and everything it must remember lives in its SQLite file.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from protocol.anvil import DEFAULT_MNEMONIC
from protocol.chain import Deployment
from protocol.errors import TrainproofError
from protocol.market import Web3Market
from protocol.outbox import Outbox, StateDB


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
        self.w3 = Web3(Web3.HTTPProvider(cfg.rpc, request_kwargs={"timeout": 30}))
        if not self.w3.is_connected():
            raise AgentError(f"no EVM node answers at {cfg.rpc}")
        deployment = Deployment.load(cfg.deployment)
        self.chain_id = int(self.w3.eth.chain_id)
        if deployment.chain_id != self.chain_id:
            raise AgentError(
                f"{cfg.deployment} is for chain {deployment.chain_id}, the node is chain "
                f"{self.chain_id}"
            )
        self.account = load_account(cfg)
        self.db = StateDB(cfg.db)
        self.outbox = Outbox(self.db, self.w3, self.account)
        self.market = Web3Market(
            self.w3, deployment.contracts["TrainProof"], self.outbox, start_block=deployment.block
        )

    @property
    def address(self) -> str:
        return str(self.account.address)

    def now(self) -> int:
        """The chain's time: the latest block's timestamp."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def head(self) -> int:
        return int(self.w3.eth.block_number)
