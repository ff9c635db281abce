"""Shared fixtures: every chain test runs on ape's embedded network and on a real anvil.

Tests that take the ``chain`` fixture are marked ``chain`` and grouped per network, so with
``pytest -n 2 --dist loadgroup`` each network lives in one worker process. ``postgres`` is a
throwaway PostgreSQL server per worker process, for the API's index database.
"""

import os
from collections.abc import Iterator

import pytest

from api.pgtemp import PostgresUnavailable, TempPostgres
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


@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres]:
    """A temporary PostgreSQL server started from the installed binaries (``api.pgtemp``);
    tests that take it (mark them ``postgres``) skip with the reason when there are none."""
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        pytest.skip("DATABASE_URL points at a shared server; the temp server is used instead")
    try:
        pg = TempPostgres().start()
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL not available: {e}")
    try:
        yield pg
    finally:
        pg.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "chain" in callspec.params:
            item.add_marker(pytest.mark.chain)
            item.add_marker(pytest.mark.xdist_group(name=f"chain-{callspec.params['chain']}"))
