"""Shared fixtures: every chain test runs on ape's embedded network and on a real anvil.

Tests that take the ``chain`` fixture are marked ``chain`` and grouped per network, so with
``pytest -n 2 --dist loadgroup`` each network lives in one worker process.
"""

from collections.abc import Iterator

import pytest

from protocol.anvil import AnvilNode
from protocol.chain import Chain, ChainSettings, connect

NETWORKS = ("local", "anvil")


@pytest.fixture(scope="session", params=NETWORKS)
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    """A connected chain client: ape's EthTester network, or anvil from node_modules."""
    if request.param == "local":
        with connect() as ch:
            yield ch
    else:
        with (
            AnvilNode() as node,
            connect(ChainSettings(rpc_url=node.url, provider="foundry")) as ch,
        ):
            yield ch


@pytest.fixture(scope="session")
def harness(chain: Chain):
    """The commitment harness (contracts/CommitmentHarness.vy), deployed once per network."""
    return chain.deploy("CommitmentHarness")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "chain" in callspec.params:
            item.add_marker(pytest.mark.chain)
            item.add_marker(pytest.mark.xdist_group(name=f"chain-{callspec.params['chain']}"))
