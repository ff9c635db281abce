"""``trainproof api ...``: run the indexer and the verification-status API."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

log = logging.getLogger("trainproof.api")
app = typer.Typer(no_args_is_help=True, help="Verification-status API: chain indexer + REST.")


#: The deployment file option, named as in every other command (``--contracts``: deprecated).
DeploymentOpt = Annotated[
    Path,
    typer.Option(
        "--deployment",
        "--contracts",
        help="deployment file written by `trainproof deploy` (--contracts: deprecated alias)",
    ),
]


#: ``--store``: where the bundle checker fetches job bundles (api.bundles).
StoreOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--store",
        metavar="STORE",
        help="a blob store to fetch and verify job bundles from (repeat for several, tried in "
        "order): a folder, the URL of `trainproof blobs serve`, or ipfs+https://gateway. "
        "Without one, every job's bundle reads `unchecked`",
    ),
]


def _checker(sessions, store: list[str] | None):  # noqa: ANN001, ANN202
    from api.bundles import BundleChecker

    stores = [s for s in store or [] if s]
    log.info("bundle checker stores=%s", stores or "none (bundles unchecked)")
    return BundleChecker(sessions, stores or None)


def _setup(db: str | None, rpc: str, deployment_file: Path, confirmations: int):  # noqa: ANN202
    from web3 import Web3

    from api.db import Meta, make_engine, make_sessions
    from api.indexer import Indexer
    from protocol.agent import AgentError, check_code
    from protocol.chain import Deployment

    if "--contracts" in sys.argv:
        log.warning("--contracts is deprecated: use --deployment (as every other command)")
    deployment = Deployment.load(deployment_file)
    if "TrainProof" not in deployment.contracts:
        raise AgentError(f"{deployment_file} has no TrainProof address: run trainproof deploy")
    w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 30}))
    if not w3.is_connected():
        raise AgentError(
            f"no EVM node answers at {rpc}: check --rpc (e.g. http://127.0.0.1:8545) and that "
            "the node is running"
        )
    chain_id = int(w3.eth.chain_id)
    if chain_id != deployment.chain_id:
        raise AgentError(
            f"{deployment_file} is for chain {deployment.chain_id}, the node at {rpc} is chain "
            f"{chain_id}: pass the deployment file of this chain or the RPC of that one"
        )
    address = deployment.contracts["TrainProof"]
    code = check_code(w3, address, deployment_file)
    sessions = make_sessions(make_engine(db))
    with sessions.begin() as s:
        s.merge(Meta(key="chain_id", value=str(chain_id)))
        s.merge(Meta(key="contract", value=address))
    indexer = Indexer(
        w3, address, sessions, start_block=deployment.block, confirmations=confirmations
    )
    log.info(
        "start chain_id=%d rpc=%s contract=%s code=ok(%d bytes) deployed_at_block=%d head=%d "
        "index_tip=%d confirmations=%d watch=%r",
        chain_id, rpc, address, code, deployment.block, int(w3.eth.block_number),
        indexer.tip(), confirmations, "TrainProof events from the deployment block on",
    )  # fmt: skip
    return sessions, indexer, chain_id, address


@app.command()
def serve(
    rpc: Annotated[str, typer.Option(help="EVM JSON-RPC URL")],
    deployment: DeploymentOpt,
    db: Annotated[
        str | None, typer.Option(help="database URL or SQLite path (default: $DATABASE_URL)")
    ] = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    confirmations: Annotated[int, typer.Option(help="blocks before an event is indexed")] = 2,
    poll: Annotated[float, typer.Option(help="seconds between chain polls")] = 1.0,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            metavar="ORIGIN",
            help="a browser origin allowed to call the API, e.g. https://app.example "
            "(repeat for several; * allows any)",
        ),
    ] = None,
    max_body_bytes: Annotated[
        int, typer.Option(help="largest request body accepted, in bytes (413 above)")
    ] = 64 * 1024,
    store: StoreOpt = None,
    bundle_poll: Annotated[
        float, typer.Option(help="seconds between passes of the bundle checker")
    ] = 5.0,
) -> None:
    """Index TrainProof's events in the background and serve /v1, /docs and the dashboard.
    A second background thread fetches and verifies each job's bundle from the --store
    locations (its own thread: a slow store delays neither indexing nor any request)."""
    import uvicorn

    from api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sessions, indexer, chain_id, address = _setup(db, rpc, deployment, confirmations)
    stop = threading.Event()
    worker = threading.Thread(target=indexer.run_forever, args=(poll, stop), daemon=True)
    worker.start()
    checker = _checker(sessions, store)
    bundles = threading.Thread(
        target=checker.run_forever, args=(bundle_poll, stop), daemon=True, name="bundles"
    )
    bundles.start()
    try:
        app = create_app(
            sessions,
            chain_id=chain_id,
            contract=address,
            cors_origins=cors_origin or (),
            max_body_bytes=max_body_bytes,
        )
        log.info("serving http://%s:%d cors_origins=%s max_body_bytes=%d", host, port,
                 cors_origin or [], max_body_bytes)  # fmt: skip
        uvicorn.run(app, host=host, port=port)
    finally:
        stop.set()
        worker.join(timeout=5)
        bundles.join(timeout=5)


@app.command()
def index(
    rpc: Annotated[str, typer.Option(help="EVM JSON-RPC URL")],
    deployment: DeploymentOpt,
    db: Annotated[str | None, typer.Option(help="database URL or SQLite path")] = None,
    confirmations: int = 2,
    store: StoreOpt = None,
) -> None:
    """Index once up to the confirmed head, check the bundles that are due (from the --store
    locations) and print the tip and the bundle verdicts."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sessions, indexer, _cid, _addr = _setup(db, rpc, deployment, confirmations)
    result = indexer.sync()
    typer.echo(f"tip={result.tip} events={result.events} rolled_back_to={result.rolled_back_to}")
    for v in _checker(sessions, store).run_once():
        typer.echo(
            f"job={v.job_id} bundle={v.bundle} status={v.status}"
            + (f" part={v.part!r} why={v.why!r}" if v.part or v.why else "")
        )


@app.command(short_help="Create or upgrade the database schema; print its revision.")
def migrate(
    db: Annotated[
        str | None, typer.Option(help="database URL or SQLite path (default: $DATABASE_URL)")
    ] = None,
) -> None:
    """Create or upgrade the index database's schema to the newest revision (Alembic, shipped
    in api/migrations) and print the revision. serve and index also migrate when they start;
    run this to upgrade ahead of a deployment. A database made before migrations existed is
    stamped at the initial revision. Safe while other processes open the same database: one
    migrates, the others wait on its lock and find nothing left to do."""
    from sqlalchemy.engine import make_url

    from api.db import current_revision, database_url, head_revision, make_engine

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    url = database_url(db)
    engine = make_engine(url)  # migrates to head
    try:
        rev = current_revision(engine)
    finally:
        engine.dispose()
    where = make_url(url).render_as_string(hide_password=True)
    typer.echo(f"{where}: revision {rev}" + (" (head)" if rev == head_revision() else ""))


@app.command(short_help="Autogenerate the next migration from the models (developers).")
def revision(
    message: Annotated[str, typer.Option("--message", "-m", help="what the revision changes")],
    db: Annotated[
        str | None,
        typer.Option(help="compare on this database, upgraded first (default: scratch SQLite)"),
    ] = None,
) -> None:
    """Autogenerate the next migration, api/migrations/versions/NNNN_slug.py, from how the
    models in api/db.py differ from the schema at the newest revision. Review the file before
    committing it: autogenerate misses renames and some type changes."""
    from api.migrations import generate_revision

    path = generate_revision(message, db)
    if path is None:
        typer.echo("the models match the newest revision: nothing to generate")
        raise typer.Exit(1)
    typer.echo(f"wrote {path}")
