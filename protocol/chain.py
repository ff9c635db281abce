"""The chain client that prover, challenger and API share.

One way in: ``connect(ChainSettings(...))`` yields a :class:`Chain` bound to a provider and a
sending account. ape does compilation, deployment and accounts; the provider is either ape's
embedded network (EthTester/py-evm, the default), an anvil started by trainproof, or any EVM
JSON-RPC URL.

Accounts: on local networks the default is ape's test account 0 (the same keys anvil funds,
both derived from the standard test mnemonic). On a real network, pass the alias of an ape
account (``ape accounts import ALIAS``); set ``APE_ACCOUNTS_<ALIAS>_PASSPHRASE`` to run
unattended.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protocol.errors import TrainproofError

# ape-vyper compiles with the `vyper` executable next to this interpreter (vyper 0.4.3 from
# PyPI, offline); make it findable even when the venv is not activated.
_VENV_BIN = str(Path(sys.executable).parent)
if _VENV_BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _VENV_BIN + os.pathsep + os.environ.get("PATH", "")

LOCAL_NETWORK = "ethereum:local:test"


class ChainError(TrainproofError):
    """The chain could not be reached or used as configured."""


class ChainSettings(BaseModel):
    """Where to connect and who signs."""

    model_config = ConfigDict(frozen=True)

    network: str = Field(
        LOCAL_NETWORK,
        description="ape network choice, e.g. ethereum:local:test or ethereum:sepolia:node",
    )
    rpc_url: str | None = Field(None, description="any EVM JSON-RPC URL; overrides `network`")
    provider: Literal["node", "foundry"] = Field(
        "node",
        description="with rpc_url: 'foundry' for an anvil node (snapshots, mining), else 'node'",
    )
    account: str | None = Field(None, description="ape account alias; None = test account")
    test_account: int = Field(0, ge=0, lt=10, description="index of the test account to sign with")

    @field_validator("rpc_url")
    @classmethod
    def _is_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError(f"rpc_url {url!r} is not an http(s):// or ws(s):// URL")
        return url


class Deployment(BaseModel):
    """Addresses written by a deploy step and read by agents and the API."""

    chain_id: int
    block: int = Field(ge=0, description="block of the first deployment (indexers start here)")
    contracts: dict[str, str]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError as e:
            raise ChainError(
                f"no deployment file at {path}: run `trainproof deploy --out {path}` first"
            ) from e
        except IsADirectoryError as e:
            raise ChainError(f"{path} is a folder: pass the deployment file inside it") from e
        except (ValueError, UnicodeDecodeError) as e:  # bad JSON or a missing/wrong field
            first = str(e).splitlines()
            why = first[0] if first else type(e).__name__
            if hasattr(e, "errors"):
                errs = e.errors()  # type: ignore[attr-defined]
                why = "; ".join(
                    f"{'.'.join(str(x) for x in er['loc']) or 'file'}: {er['msg']}" for er in errs
                )
            raise ChainError(
                f"{path} is not a deployment file ({why}): write it with trainproof deploy"
            ) from None


@cache
def contracts_project() -> Any:
    """trainproof's own ape project (its contracts/ and ape-config.yaml), found through the
    package rather than the working directory, so the installed ``trainproof`` works from any
    folder."""
    from protocol.anvil import REPO_ROOT

    if not (REPO_ROOT / "contracts" / "TrainProof.vy").is_file():
        raise ChainError(
            f"trainproof's contract sources are not next to the package ({REPO_ROOT}/contracts): "
            "install trainproof from a checkout (pip install -e PATH)"
        )
    _quiet_ape()
    from ape import Project

    return Project(REPO_ROOT)


def _quiet_ape() -> None:
    warnings.filterwarnings("ignore", module="pydantic_settings")
    from ape.logging import LogLevel, logger

    logger.set_level(LogLevel.WARNING)


class Chain:
    """A connected provider plus the account that signs this process's transactions."""

    def __init__(self, provider: Any, sender: Any) -> None:
        self.provider = provider
        self.sender = sender

    @property
    def chain_id(self) -> int:
        return int(self.provider.chain_id)

    @property
    def block_number(self) -> int:
        from ape import chain

        return int(chain.blocks.height)

    def contract_type(self, name: str) -> Any:
        """The compiled contract container ``name`` (compiles contracts/ on first use)."""
        project = contracts_project()
        try:
            return getattr(project, name)
        except AttributeError as e:
            raise ChainError(f"no contract named {name!r} in {project.path}/contracts: {e}") from e

    def deploy(self, name: str, *args: Any, sender: Any = None) -> Any:
        """Deploy contract ``name`` with constructor ``args``; returns the ape contract instance."""
        return self.contract_type(name).deploy(*args, sender=sender or self.sender)

    def at(self, name: str, address: str) -> Any:
        """The contract ``name`` already deployed at ``address``."""
        return self.contract_type(name).at(address)

    def test_account(self, index: int) -> Any:
        from ape import accounts

        return accounts.test_accounts[index]


@contextmanager
def connect(settings: ChainSettings | None = None) -> Iterator[Chain]:
    """Connect ape to the configured chain for the duration of the block."""
    settings = settings or ChainSettings()
    _quiet_ape()
    from ape import accounts, networks
    from ape.exceptions import ApeException

    if settings.rpc_url is None:
        choice, provider_settings = settings.network, {}
    elif settings.provider == "foundry":
        choice, provider_settings = "ethereum:local:foundry", {"host": settings.rpc_url}
    else:
        choice, provider_settings = settings.rpc_url, {}
    try:
        ctx = networks.parse_network_choice(choice, provider_settings=provider_settings)
        provider = ctx.__enter__()
    except ApeException as e:
        raise ChainError(
            f"cannot connect to {choice}: {e} (check --rpc and that the node is running)"
        ) from e
    try:
        if settings.account is not None:
            sender = accounts.load(settings.account)
        else:
            sender = accounts.test_accounts[settings.test_account]
        yield Chain(provider, sender)
    finally:
        ctx.__exit__(*sys.exc_info())


def deploy_market(chain: Chain) -> Deployment:
    """Deploy the one-step Executor and the TrainProof market; the addresses to save."""
    block = chain.block_number
    executor = chain.deploy("Executor")
    market = chain.deploy("TrainProof", executor.address)
    return Deployment(
        chain_id=chain.chain_id,
        block=block,
        contracts={"Executor": str(executor.address), "TrainProof": str(market.address)},
    )
