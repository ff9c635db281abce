"""Shared fixtures: every chain test runs on ape's embedded network and on a real anvil.

Tests that take the ``chain`` fixture are marked ``chain`` and grouped per network, so with
``pytest -n 2 --dist loadgroup`` each network lives in one worker process. The API's suites
run on a SQLite index and on PostgreSQL (``index_url``, ``new_index_url``): the server that
``DATABASE_URL`` names, or else a throwaway one per worker process (``postgres``).
"""

import itertools
import os
import secrets
from collections.abc import Callable, Iterable, Iterator

import pytest

from api.pgtemp import ExistingPostgres, PostgresUnavailable, TempPostgres
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


@pytest.fixture(scope="module")
def market(chain: Chain):
    """Executor + TrainProof, deployed once per test module and network (the game tests)."""
    executor = chain.deploy("Executor")
    return chain.deploy("TrainProof", executor.address)


@pytest.fixture(scope="session")
def harness(chain: Chain):
    """The commitment harness (contracts/CommitmentHarness.vy), deployed once per network."""
    return chain.deploy("CommitmentHarness")


@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres | ExistingPostgres]:
    """A PostgreSQL server for the API's index databases: the one ``DATABASE_URL`` names when
    it names one (the tests' databases are dropped afterwards), else a temporary server per
    worker started from the installed binaries (``api.pgtemp``). Tests that take it (mark
    them ``postgres``) skip with the reason when there is neither."""
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        pg: TempPostgres | ExistingPostgres = ExistingPostgres(url)
    else:
        try:
            pg = TempPostgres().start()
        except PostgresUnavailable as e:
            pytest.skip(f"PostgreSQL not available: {e}")
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def index_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A new, empty index database per module, once a SQLite file and once a database on the
    temporary PostgreSQL server: the API's suites run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('index') / 'index.db'}"
    return request.getfixturevalue("postgres").create_database(f"index_{secrets.token_hex(4)}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def new_index_url(request: pytest.FixtureRequest, tmp_path) -> Callable[[], str]:
    """Each call: the URL of another new, empty database, on SQLite and on PostgreSQL."""
    n = itertools.count()
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path / f'index{next(n)}.db'}"
    pg = request.getfixturevalue("postgres")
    return lambda: pg.create_database(f"index_{secrets.token_hex(6)}")


def on_the_embedded_network(*cases: str, of: Iterable[str]) -> pytest.MarkDecorator:
    """Of a parametrised game matrix, play only ``cases`` (the ids of its other parameters,
    e.g. ``"pooling"``) on ape's embedded network as well; the whole matrix runs on anvil.

    The contracts are the same bytecode on both; the embedded network (py-evm) runs each
    game 10-30x slower than anvil and all of its tests share one worker (``chain-local``),
    so a full matrix there is the suite's critical path. A sample keeps each phase the
    matrix exercises (a partial bisection, a gather's witness, a one-step) covered there."""
    if unknown := set(cases) - set(of):
        raise ValueError(f"no such case in the matrix: {sorted(unknown)}")
    return pytest.mark.embedded_network_sample(cases=frozenset(cases))


def _embedded_case(item: pytest.Item) -> tuple[str, frozenset[str]] | None:
    """For a sampled game test on the embedded network: its case id and the sample."""
    mark = item.get_closest_marker("embedded_network_sample")
    callspec = getattr(item, "callspec", None)
    if mark is None or callspec is None or callspec.params.get("chain") != "local":
        return None
    return callspec.id.removeprefix("local-"), mark.kwargs["cases"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, deselected = [], []
    for item in items:
        case = _embedded_case(item)
        (deselected if case is not None and case[0] not in case[1] else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "chain" in callspec.params:
            item.add_marker(pytest.mark.chain)
            item.add_marker(pytest.mark.xdist_group(name=f"chain-{callspec.params['chain']}"))
