"""The ``trainproof`` command line.

    trainproof demo                           the whole protocol on a local anvil
    trainproof train | replay                 canonical training and bit-exact replay
    trainproof job bundle                     a job's bundle: program, C_0, data, metadata
    trainproof deploy | job register          deploy the market, publish a bundle, register
    trainproof prover run | challenger watch  the two services
    trainproof blobs publish | serve | get    the checkpoint store
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


@app.command("train")
def train(
    out: Annotated[Path, typer.Option(help="new or empty folder for the run")],
    example: Annotated[str | None, typer.Option(help="built-in example, e.g. digits-mlp")] = None,
    job: Annotated[Path | None, typer.Option(help="job folder from `trainproof compile`")] = None,
    steps: Annotated[int | None, typer.Option(help="number of training steps N")] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="checkpoint interval k (divides N)")
    ] = None,
    data: Annotated[
        str,
        typer.Option(
            help="with --job: digits | text:bytes | text:bpe:VOCAB | FILE.npz | "
            "FILE.safetensors | DIR. digits: scikit-learn's digits. text:bytes: windows of the "
            "torch 2.13.0 sources (50 files, sha256-checked), one token per byte (vocab 256), "
            "context from the job's x shape [B, T], --heldout = held-out files (default 5). "
            "text:bpe:VOCAB: the same text as a byte-level BPE of VOCAB tokens trained on the "
            "training files (tokenizer.json written to the run). FILE.npz / FILE.safetensors: "
            "arrays x and y. DIR: x.npy and y.npy, memory-mapped (larger than memory streams)."
        ),
    ] = "digits",
    seed: Annotated[int, typer.Option(help="with --job: dataset seed")] = 0,
    heldout: Annotated[int | None, typer.Option(help="with --job: held-out examples")] = None,
    backend: Annotated[str, typer.Option(help="torch | numpy")] = "torch",
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    resume: Annotated[
        bool, typer.Option(help="continue the interrupted run in --out from its last checkpoint")
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            help="with --job compiled with --micro-batches: run each step's micro-batches on "
            "the Ray cluster at this address (auto | HOST:PORT); the same checkpoints and roots"
        ),
    ] = None,
) -> None:
    """Train canonically (bit-exact): a built-in --example, or a compiled --job. Prints one
    JSON line per checkpoint (step, state root, loss, steps/s) and a progress bar; an
    interrupted --example run continues with --resume."""
    if job is None:
        if ray is not None:
            raise typer.BadParameter("--ray trains a compiled --job's micro-batches on workers")
        train_command(out, example, steps, checkpoint_every, backend, device, resume)
        return
    if example is not None or resume:
        raise typer.BadParameter("--job trains a compiled job: drop --example and --resume")
    if steps is None or checkpoint_every is None:
        raise typer.BadParameter("--job needs --steps and --checkpoint-every")
    from trainproof.jobcli import train_job

    train_job(job, data, steps, checkpoint_every, out, backend, seed, heldout, ray)


from trainproof.jobcli import bundle_command, compile_command  # noqa: E402

app.command(
    "compile",
    help="Capture one training step of a PyTorch model (FILE.py:FACTORY returning model, "
    "optimizer, loss function and an example batch) and write a job folder.",
)(compile_command)


@app.command("replay")
def replay(
    run: Annotated[Path, typer.Option(help="run folder written by `trainproof train`")],
    from_step: Annotated[int | None, typer.Option(help="first checkpoint step (default 0)")] = None,
    to_step: Annotated[int | None, typer.Option(help="last checkpoint step (default N)")] = None,
    backend: Annotated[str, typer.Option(help="torch | numpy")] = "torch",
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
) -> None:
    """Re-execute a run from its stored checkpoints and report, per checkpoint, whether the
    replayed state root matches (or the first step that does not). Runs of a compiled job
    (`train --job`) replay every interval."""

    if _run_format(run / "run.json") == "trainproof-job-run/v0":
        if from_step is not None or to_step is not None:
            raise typer.BadParameter("--from-step/--to-step are not supported for job runs yet")
        from trainproof.jobcli import replay_job_command

        replay_job_command(run, backend, device)
        return
    replay_command(run, from_step, to_step, backend=backend, device=device)


def _run_format(meta: Path) -> str | None:
    """The ``format`` a run.json declares; None when absent or unreadable (replay_command then
    says what is wrong with it)."""
    import json

    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return data.get("format") if isinstance(data, dict) else None


app.command("deploy")(agents.deploy)
job = typer.Typer(no_args_is_help=True, help="Requester commands.")
job.command("register")(agents.register)
job.command("bundle")(bundle_command)
app.add_typer(job, name="job")
prover = typer.Typer(no_args_is_help=True, help="The trainer's service.")
prover.command("run")(agents.prover_run)
app.add_typer(prover, name="prover")
challenger = typer.Typer(no_args_is_help=True, help="The watcher's service.")
challenger.command("watch")(agents.challenger_watch)
app.add_typer(challenger, name="challenger")

blobs = typer.Typer(
    no_args_is_help=True,
    help="The content-addressed checkpoint store: publish a run, serve it over HTTP, fetch a "
    "blob from several untrusted stores.",
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
    from replay.data.publish import publish_run

    for pointer in publish_run(FileStore(store), run):
        print(pointer.model_dump_json())


@blobs.command("serve")
def blobs_serve(
    store: Annotated[Path, typer.Option(help="store folder to serve (read-only)")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (0: any free port)")] = 8600,
) -> None:
    """Serve a store over HTTP, read-only: GET|HEAD /blobs/<sha256>, GET /roots/<state root>,
    and GET|HEAD /ipfs/<cid>?format=raw (an IPFS trustless gateway for the raw blocks that are
    its blobs). Clients re-hash everything they fetch, so the server needs no trust."""
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


@blobs.command("get")
def blobs_get(
    address: Annotated[str, typer.Argument(help="the blob's sha256 (64 hex) or raw-block CID")],
    store: Annotated[
        list[str],
        typer.Option(
            help="where to look, in this order (repeat the option): a folder, the URL of "
            "`trainproof blobs serve`, or an IPFS trustless gateway as ipfs+https://host"
        ),
    ],
    out: Annotated[Path, typer.Option(help="file to write the blob to")],
    max_bytes: Annotated[
        int | None, typer.Option(help="refuse a blob larger than this (default 1 GiB)")
    ] = None,
    tries: Annotated[int, typer.Option(help="attempts, with exponential backoff")] = 4,
) -> None:
    """Fetch one blob from the first --store that has it intact: each answer is re-hashed, and
    a store that is down, lacks it, serves other bytes or too many is skipped (logged). Writes
    it to --out and prints {address, cid, bytes}."""
    import json

    from protocol.blobs import address_of_cid, cid_of, fetch_with_retry, open_stores

    hex_digits = address.removeprefix("0x")  # else a CID (59 characters for a raw block)
    address = hex_digits.lower() if len(hex_digits) == 64 else address_of_cid(address)
    data = fetch_with_retry(
        open_stores(store), address, what=f"{out}", tries=tries, max_bytes=max_bytes
    )
    out.write_bytes(data)
    print(json.dumps({"address": address, "cid": cid_of(address), "bytes": len(data)}))


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
