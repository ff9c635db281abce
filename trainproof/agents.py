"""CLI commands of the operators: deploy, register a job, run a prover, watch as a challenger."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from protocol.agent import Agent, AgentConfig, AgentError
from protocol.constants import MAX_CHECKPOINTS
from protocol.game import MIN_CLOCK, MIN_WINDOW, job_problems
from protocol.units import eth

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


Stores = Annotated[
    list[str],
    typer.Option(
        "--store",
        help="blob store (repeatable, tried in order): a folder, an http(s) URL of "
        "`trainproof blobs serve`, or an ipfs+http(s) trustless gateway",
    ),
]


def register(
    rpc: Rpc,
    deployment: DeploymentFile,
    bundle: Annotated[Path, typer.Option(help="bundle folder written by `trainproof job bundle`")],
    store: Stores,
    every: Annotated[int, typer.Option(help="steps per checkpoint k (divides the bundle's N)")],
    reward: Annotated[int, typer.Option(help="reward escrowed now, in wei")],
    stake: Annotated[int, typer.Option(help="stake the trainer must post, in wei")],
    bond: Annotated[int, typer.Option(help="bond each challenger posts, in wei")],
    db: Db = Path("requester.db"),
    key_env: KeyEnv = None,
    test_account: TestAccount = None,
    clock: Annotated[
        int, typer.Option(help=f"seconds per party per dispute (at least {MIN_CLOCK})")
    ] = 3600,
    window: Annotated[
        int, typer.Option(help=f"challenge window after commitment, s (at least {MIN_WINDOW})")
    ] = 7200,
    train_time: Annotated[int, typer.Option(help="seconds the trainer has to commit")] = 3600,
) -> None:
    """Publish a job bundle to the stores, check that every part of it can be fetched back
    from them and verifies, and register the job that binds it (program, data, C_0 and the
    bundle's hash on-chain)."""
    import secrets

    from replay.data.bundle import Bundle, publish_bundle, read_bundle_dir

    local, address = read_bundle_dir(bundle)
    opened = Bundle.open(local, address)
    steps = opened.manifest.dataset.steps
    check_job_parameters(steps, every, reward, stake, bond, clock, window, train_time)
    agent = Agent(AgentConfig(rpc=rpc, deployment=deployment, db=db, key_env=key_env,
                              test_account=test_account))  # fmt: skip
    balance = int(agent.w3.eth.get_balance(agent.address))
    if balance < reward:
        raise AgentError(
            f"--reward {eth(reward)} is more than {agent.address} holds ({eth(balance)}): fund "
            "it or lower --reward"
        )
    spec = opened.job_spec(
        every=every, stake=stake, bond=bond, clock=clock, window=window, train_time=train_time
    )
    problems = job_problems(spec)
    if problems:  # the contract's bounds (protocol.game), said before the node is asked
        raise AgentError(
            "the contract refuses this job: "
            + "; ".join(problems)
            + " (bounds: docs/protocol.md §4.5)"
        )
    publish_bundle(opened, store, progress=progress_bar("publishing and checking the bundle"))
    refusal = would_revert(agent, "register_job", spec.as_tuple(), value=reward)
    if refusal:
        raise AgentError(f"the contract refuses this job: {refusal}")
    sent = agent.market.transact(
        "register_job", spec.as_tuple(), value=reward, key=f"register:{secrets.token_hex(8)}"
    )
    if sent is None or not sent.success:
        raise AgentError(
            "the register_job transaction did not go through"
            + ("" if sent is None else f" (reverted: {sent.hash})")
            + ": check the balance of the account and the parameters, then try again"
        )
    job_id = int.from_bytes(bytes(sent.logs[0]["topics"][1]), "big")
    typer.echo(
        f"registered job {job_id} ({opened.manifest.name}, bundle {address}): {steps} steps, a "
        f"checkpoint every {every}, reward {eth(reward)}, stake {eth(stake)}, bond {eth(bond)}",
        err=True,
    )
    typer.echo(f'{{"job": {job_id}, "bundle": "{address}"}}')


def progress_bar(title: str) -> Callable[[int, int], None]:
    """A rich progress bar on stderr, advanced by ``(done, total)`` calls."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            bar = Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(),
                           console=Console(stderr=True), transient=True)  # fmt: skip
            bar.start()
            state.update(bar=bar, task=bar.add_task(title, total=total))
        state["bar"].update(state["task"], completed=done)
        if done >= total:
            state.pop("bar").stop()

    return update


def check_job_parameters(
    steps: int, every: int, reward: int, stake: int, bond: int, *durations: int
) -> None:
    """Refuse malformed parameters in one line each (the contract's bounds are checked on the
    spec by protocol.game.job_problems); warn about a legal but pointless zero reward.
    ``steps`` is the bundle's N."""
    if every < 1:
        raise AgentError(f"--every {every} must be at least 1")
    if steps % every:
        divisors = [d for d in range(every, 0, -1) if steps % d == 0]
        raise AgentError(
            f"--every {every} does not divide the bundle's {steps} steps: the run commits a "
            f"checkpoint every k steps up to step N (try --every {divisors[0]})"
        )
    if steps // every > MAX_CHECKPOINTS:
        raise AgentError(
            f"the bundle's {steps} steps at --every {every} make {steps // every} checkpoints; a "
            f"commitment holds at most {MAX_CHECKPOINTS}: raise --every to at least "
            f"{-(-steps // MAX_CHECKPOINTS)}"
        )
    for name, value in (("reward", reward), ("stake", stake), ("bond", bond)):
        if value < 0:
            raise AgentError(f"--{name} {value} is negative: amounts are in wei, 0 or more")
    if any(d <= 0 for d in durations):
        raise AgentError("--clock, --window and --train-time must be positive (seconds)")
    if reward == 0:  # legal; stake and bond have minimums (protocol.game.job_problems)
        typer.echo("warning: --reward 0: no trainer is paid to do this job", err=True)


def would_revert(agent: Agent, fn: str, *args: object, value: int = 0) -> str | None:
    """The contract's refusal of a call (its revert reason), or None when it would succeed."""
    from web3.exceptions import ContractLogicError

    try:
        getattr(agent.market.contract.functions, fn)(*args).call(
            {"from": agent.address, "value": value}
        )
    except ContractLogicError as e:
        return str(e.message or e)
    return None


def prover_run(
    rpc: Rpc,
    deployment: DeploymentFile,
    job: Annotated[int, typer.Option(help="the job id to accept and train")],
    store: Stores,
    db: Db = Path("prover.db"),
    key_env: KeyEnv = None,
    test_account: TestAccount = None,
    fault: Annotated[
        str | None,
        typer.Option(help="demos/tests: step=T,op=J,elem=E | lazy | wrong-batch | skip-steps"),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            help="data-parallel training: run each step's micro-batches on the Ray cluster at "
            "this address (auto | HOST:PORT); needs a job compiled with --micro-batches N > 1"
        ),
    ] = None,
    poll: Annotated[float, typer.Option(help="seconds between polls")] = 0.5,
) -> None:
    """Accept a job, train it canonically, publish checkpoints, commit, answer every dispute
    move, finalise and withdraw. Safe to kill and restart at any moment."""
    from prover.service import ProverConfig, ProverService

    cfg = ProverConfig(rpc=rpc, deployment=deployment, db=db, key_env=key_env,
                       test_account=test_account, job=job, store=store,
                       fault=fault, poll=poll, ray=ray)  # fmt: skip
    service = ProverService(cfg)
    with stopped_by_signals():
        try:
            status = service.run()
        except KeyboardInterrupt:
            service.summary()
            typer.echo("stopped: start it again with the same --db to continue", err=True)
            raise typer.Exit(code=130) from None
    typer.echo(status.model_dump_json())


def challenger_watch(
    rpc: Rpc,
    deployment: DeploymentFile,
    store: Stores,
    db: Db = Path("challenger.db"),
    key_env: KeyEnv = None,
    test_account: TestAccount = None,
    rate: Annotated[float, typer.Option(help="probability of replaying each interval")] = 0.25,
    interval: Annotated[
        list[int] | None,
        typer.Option(help="replay exactly this interval of each commitment (repeatable; audits)"),
    ] = None,
    confirmations: Annotated[int, typer.Option(help="blocks a commitment must be under")] = 2,
    lie: Annotated[bool, typer.Option(help="demos/tests: dispute honest work and lie")] = False,
    attest_to: Annotated[
        str | None,
        typer.Option(
            help="verification-status API URL: send it a signed coverage attestation "
            "for every replayed interval that matched"
        ),
    ] = None,
    from_block: Annotated[
        int | None,
        typer.Option(help="first block to look for commitments in (default: the deployment's)"),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            help="replay farm: send every sampled interval's replay to the Ray cluster at "
            "this address (`auto`: the one this machine joined with `ray start`; HOST:PORT: "
            "its head) and check all new jobs at once; this process keeps the chain side"
        ),
    ] = None,
    ray_cpus: Annotated[
        float, typer.Option(help="with --ray: CPUs (torch threads) each replay task asks for")
    ] = 1.0,
    ray_gpus: Annotated[
        float, typer.Option(help="with --ray: GPUs each replay task asks for")
    ] = 0.0,
    poll: Annotated[float, typer.Option(help="seconds between polls")] = 0.5,
    max_polls: Annotated[int | None, typer.Option(help="stop after this many polls")] = None,
) -> None:
    """Watch commitments, replay sampled intervals bit-exactly, dispute the first mismatch and
    play it to the verdict; settle and withdraw. Safe to kill and restart at any moment."""
    from challenger.service import ChallengerConfig, ChallengerService, detection_probability

    cfg = ChallengerConfig(rpc=rpc, deployment=deployment, db=db, key_env=key_env,
                           test_account=test_account, store=store, rate=rate, intervals=interval,
                           confirmations=confirmations, lie=lie, attest_to=attest_to,
                           from_block=from_block, poll=poll, ray=ray, ray_cpus=ray_cpus,
                           ray_gpus=ray_gpus)  # fmt: skip
    typer.echo(
        f"sampling each interval with probability {rate}: a cheat confined to one interval is "
        f"caught with probability {rate:.2f}; one confined to 1% of 1,000 intervals with "
        f"probability {detection_probability(rate, 1000, 0.01):.4f}",
        err=True,
    )
    service = ChallengerService(cfg)
    with stopped_by_signals():
        try:
            service.run(max_polls=max_polls)  # ends with the summary, also when stopped
        except KeyboardInterrupt:
            typer.echo("stopped: start it again with the same --db to continue", err=True)


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGTERM stops a service like Ctrl-C does: through its summary, not mid-air."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
