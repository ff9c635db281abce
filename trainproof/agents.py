"""CLI commands of the operators: deploy, register a job, run a prover, watch as a challenger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from protocol.agent import Agent, AgentConfig

Rpc = Annotated[str, typer.Option(help="EVM JSON-RPC URL, e.g. http://127.0.0.1:8545")]
DeploymentFile = Annotated[
    Path, typer.Option("--deployment", help="deployment file written by `trainproof deploy`")
]
Db = Annotated[Path, typer.Option(help="this agent's SQLite state file (created if missing)")]
KeyEnv = Annotated[
    str | None, typer.Option(help="environment variable holding this agent's hex private key")
]
TestAccount = Annotated[
    int | None, typer.Option(help="local dev chains: sign as account N of the test mnemonic")
]
Example = Annotated[str, typer.Option(help="the example the job trains")]


def deploy(
    rpc: Rpc,
    out: Annotated[Path, typer.Option(help="where to write the deployment file")],
    account: Annotated[
        str | None, typer.Option(help="ape account alias to deploy from (default: test account 0)")
    ] = None,
) -> None:
    """Compile and deploy the Executor and the TrainProof market; write their addresses."""
    from protocol.chain import ChainSettings, connect, deploy_market

    with connect(ChainSettings(rpc_url=rpc, account=account)) as chain:
        deployment = deploy_market(chain)
    deployment.save(out)
    typer.echo(deployment.model_dump_json())


def register(
    rpc: Rpc,
    deployment: DeploymentFile,
    steps: Annotated[int, typer.Option(help="training steps N")],
    every: Annotated[int, typer.Option(help="steps per checkpoint k (divides N)")],
    reward: Annotated[int, typer.Option(help="reward escrowed now, in wei")],
    stake: Annotated[int, typer.Option(help="stake the trainer must post, in wei")],
    bond: Annotated[int, typer.Option(help="bond each challenger posts, in wei")],
    db: Db = Path("requester.db"),
    key_env: KeyEnv = None,
    test_account: TestAccount = None,
    example: Example = "digits-mlp",
    clock: Annotated[int, typer.Option(help="seconds per party per dispute")] = 3600,
    window: Annotated[int, typer.Option(help="challenge window after commitment, s")] = 7200,
    train_time: Annotated[int, typer.Option(help="seconds the trainer has to commit")] = 3600,
) -> None:
    """Register a training job of an example (its program, data and C_0 bound on-chain)."""
    import secrets

    from replay.dispute import example_computation, job_spec_for

    agent = Agent(AgentConfig(rpc=rpc, deployment=deployment, db=db, key_env=key_env,
                              test_account=test_account))  # fmt: skip
    spec = job_spec_for(
        example_computation(example, steps, every),
        stake=stake, bond=bond, clock=clock, window=window, train_time=train_time,
    )  # fmt: skip
    sent = agent.market.transact(
        "register_job", spec.as_tuple(), value=reward, key=f"register:{secrets.token_hex(8)}"
    )
    if sent is None or not sent.success:
        raise typer.Exit(code=1)
    job_id = int.from_bytes(bytes(sent.logs[0]["topics"][1]), "big")
    typer.echo(f'{{"job": {job_id}}}')


def prover_run(
    rpc: Rpc,
    deployment: DeploymentFile,
    job: Annotated[int, typer.Option(help="the job id to accept and train")],
    store: Annotated[Path, typer.Option(help="blob store folder to publish checkpoints into")],
    db: Db = Path("prover.db"),
    key_env: KeyEnv = None,
    test_account: TestAccount = None,
    example: Example = "digits-mlp",
    fault: Annotated[
        str | None,
        typer.Option(help="demos/tests: step=T,op=J,elem=E | lazy | wrong-batch | skip-steps"),
    ] = None,
    poll: Annotated[float, typer.Option(help="seconds between polls")] = 0.5,
) -> None:
    """Accept a job, train it canonically, publish checkpoints, commit, answer every dispute
    move, finalise and withdraw. Safe to kill and restart at any moment."""
    from prover.service import ProverConfig, ProverService

    cfg = ProverConfig(rpc=rpc, deployment=deployment, db=db, key_env=key_env,
                       test_account=test_account, job=job, store=str(store), example=example,
                       fault=fault, poll=poll)  # fmt: skip
    status = ProverService(cfg).run()
    typer.echo(status.model_dump_json())


def challenger_watch(
    rpc: Rpc,
    deployment: DeploymentFile,
    store: Annotated[str, typer.Option(help="blob store: a folder or an http(s) URL")],
    db: Db = Path("challenger.db"),
    key_env: KeyEnv = None,
    test_account: TestAccount = None,
    example: Example = "digits-mlp",
    rate: Annotated[float, typer.Option(help="probability of replaying each interval")] = 0.25,
    confirmations: Annotated[int, typer.Option(help="blocks a commitment must be under")] = 2,
    lie: Annotated[bool, typer.Option(help="demos/tests: dispute honest work and lie")] = False,
    attest_to: Annotated[
        str | None,
        typer.Option(
            help="verification-status API URL: send it a signed coverage attestation "
            "for every replayed interval that matched"
        ),
    ] = None,
    poll: Annotated[float, typer.Option(help="seconds between polls")] = 0.5,
    max_polls: Annotated[int | None, typer.Option(help="stop after this many polls")] = None,
) -> None:
    """Watch commitments, replay sampled intervals bit-exactly, dispute the first mismatch and
    play it to the verdict; settle and withdraw. Safe to kill and restart at any moment."""
    from challenger.service import ChallengerConfig, ChallengerService, detection_probability

    cfg = ChallengerConfig(rpc=rpc, deployment=deployment, db=db, key_env=key_env,
                           test_account=test_account, store=store, example=example, rate=rate,
                           confirmations=confirmations, lie=lie, attest_to=attest_to,
                           poll=poll)  # fmt: skip
    typer.echo(
        f"sampling each interval with probability {rate}: a cheat confined to one interval is "
        f"caught with probability {rate:.2f}; one confined to 1% of 1,000 intervals with "
        f"probability {detection_probability(rate, 1000, 0.01):.4f}",
        err=True,
    )
    ChallengerService(cfg).run(max_polls=max_polls)
