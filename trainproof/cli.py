"""The ``trainproof`` command line.

    trainproof demo                           the whole protocol on a local anvil
    trainproof train | replay                 canonical training and bit-exact replay
    trainproof deploy | job register          deploy the market, register a job
    trainproof prover run | challenger watch  the two services
    trainproof blobs publish | serve          the checkpoint store
    trainproof api serve | index | migrate    the verification-status API

Each command's ``--help`` explains its options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import typer.core

from api.cli import app as api_app
from replay.cli import replay_command, train_command
from trainproof import agents


def one_line(e: BaseException) -> str | None:
    """The one line an operator reads for an error they can fix (None: a bug, keep the
    traceback). Option names are spelt as on the command line."""
    from pydantic import ValidationError

    from protocol.agent import is_transient
    from protocol.errors import TrainproofError

    if isinstance(e, ValidationError):
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]).replace("rpc_url", "rpc")
            parts.append(f"--{loc.replace('_', '-')}: {err['msg']}" if loc else err["msg"])
        return "; ".join(parts) + " (see --help)"
    if isinstance(e, TrainproofError):
        return str(e)
    if is_transient(e):
        return (
            f"the node did not answer ({type(e).__name__}): check --rpc and that the node is "
            "running"
        )
    return None


class _OneLineErrors(typer.core.TyperGroup):
    """Every command: an error the user can fix ends in one line on stderr, exit code 2."""

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as e:
            line = one_line(e)
            if line is None:
                raise
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help=(
        "trainproof: optimistically verifiable ML training. Trainers commit Merkle roots of "
        "deterministic checkpoints on-chain; challengers replay steps bit-exactly and settle "
        "any disagreement with an on-chain bisection that ends in one float32 operation."
    ),
)

app.command(
    "train",
    help="Train an example model in canonical (bit-exact) mode, writing checkpoints and "
    "printing one JSON line per checkpoint, then the held-out accuracy.",
)(train_command)
app.command(
    "replay",
    help="Re-execute a run from its stored checkpoints and report, per checkpoint, whether "
    "the replayed state root matches (or the first step that does not).",
)(replay_command)

app.command("deploy")(agents.deploy)
job = typer.Typer(no_args_is_help=True, help="Requester commands.")
job.command("register")(agents.register)
app.add_typer(job, name="job")
prover = typer.Typer(no_args_is_help=True, help="The trainer's service.")
prover.command("run")(agents.prover_run)
app.add_typer(prover, name="prover")
challenger = typer.Typer(no_args_is_help=True, help="The watcher's service.")
challenger.command("watch")(agents.challenger_watch)
app.add_typer(challenger, name="challenger")

blobs = typer.Typer(
    no_args_is_help=True,
    help="The content-addressed checkpoint store: publish a run, serve it over HTTP.",
)
app.add_typer(blobs, name="blobs")


@blobs.command("publish")
def blobs_publish(
    run: Annotated[Path, typer.Option(help="run folder written by `trainproof train`")],
    store: Annotated[Path, typer.Option(help="store folder (created if missing)")],
) -> None:
    """Verify a run (every checkpoint re-hashed against run.json, the run root recomputed),
    then put every checkpoint into a store, keyed by its state root; prints one JSON line per
    checkpoint. A damaged run is refused and nothing of it is published."""
    from protocol.blobs import FileStore
    from replay.publish import publish_run

    for pointer in publish_run(FileStore(store), run):
        print(pointer.model_dump_json())


@blobs.command("serve")
def blobs_serve(
    store: Annotated[Path, typer.Option(help="store folder to serve (read-only)")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (0: any free port)")] = 8600,
) -> None:
    """Serve a store over HTTP: GET /blobs/<sha256> and GET /roots/<state root>. Clients
    re-hash everything they fetch, so the server needs no trust."""
    import logging

    from protocol.blobs import FileStore, make_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = make_server(FileStore(store), host, port)
    print(f"serving {store} at http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
def demo(
    rpc: Annotated[
        str | None,
        typer.Option(help="use this EVM JSON-RPC URL instead of starting a local anvil"),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed choosing where the cheat's fault is")] = 7,
) -> None:
    """Run the whole protocol on a local anvil: an honest and a cheating trainer commit
    digits-mlp runs, a challenger replays both, disputes the cheat and plays it live down to
    one float32 operation on-chain; the cheat is slashed, the honest job finalises."""
    from trainproof.demo import run_demo

    raise typer.Exit(code=run_demo(rpc_url=rpc, seed=seed))


app.add_typer(api_app, name="api")


if __name__ == "__main__":
    app()
