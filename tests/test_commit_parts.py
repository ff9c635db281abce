"""commit_run's parts (protocol.game.commit_parts) and the run root the contract computes from
them (protocol.game.parts_run_root) agree with the run tree (replay.runner.run_root_of)."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.constants import COMMIT_PART, MAX_CHECKPOINTS
from protocol.game import MIN_BOND, MIN_STAKE, JobSpec, commit_parts, parts_run_root
from protocol.market import CommitmentError, assemble_roots
from replay.runner import run_root_of


def roots(n: int, salt: int = 0) -> list[bytes]:
    """C_0..C_n, synthetic."""
    return [hashlib.sha256(f"{salt}:{i}".encode()).digest() for i in range(n + 1)]


def check(m: int, part: int = COMMIT_PART) -> None:
    c = roots(m)
    parts = commit_parts(c[1:], part)
    assert [r for p in parts for r in p] == c[1:]
    n = m + 1  # leaves of the run tree, C_0 included
    assert len(parts) == -(-n // part)
    # part p holds leaves [p * part, (p + 1) * part): all full but the last
    sizes = [len(p) + (p_i == 0) for p_i, p in enumerate(parts)]
    assert all(s == part for s in sizes[:-1]) and 0 < sizes[-1] <= part
    assert parts_run_root(c[0], parts) == run_root_of(c)


@pytest.mark.parametrize(
    "m",
    [1, 2, 3, 7, 8, 2046, 2047, 2048, 2049, 4094, 4095, 4096, 4097, 6143, 6144, 10_000],
)
def test_parts_make_the_run_root(m: int) -> None:
    check(m)


def test_the_largest_commitment() -> None:
    check(MAX_CHECKPOINTS)
    parts = commit_parts(roots(MAX_CHECKPOINTS)[1:])
    # 32 full parts of leaves C_0..C_65535, and C_65536 alone
    assert (
        len(parts) == 33
        and len(parts[0]) == COMMIT_PART - 1
        and parts[-1] == [roots(MAX_CHECKPOINTS)[-1]]
    )


@settings(max_examples=200, deadline=None)
@given(m=st.integers(1, 300), part=st.sampled_from([1, 2, 4, 8, 16, 32]))
def test_parts_of_any_power_of_two_size(m: int, part: int) -> None:
    """The same alignment argument holds for every power-of-two part size."""
    check(m, part)


def test_no_roots_is_no_commitment() -> None:
    with pytest.raises(ValueError):
        commit_parts([])


def test_assemble_orders_parts_and_checks_the_run_root() -> None:
    c = roots(5000)
    spec = JobSpec(
        program_root=c[1], program_len=1, dataset_root=c[2], initial_root=c[0], bundle=c[3],
        steps=5000, every=1, slots=1, stake=MIN_STAKE, bond=MIN_BOND, clock=3600,
        window=3600, train_time=3600,
    )  # fmt: skip
    parts = commit_parts(c[1:])
    events = [(p, rs) for p, rs in enumerate(parts)][::-1]  # any order of logs
    assert assemble_roots(1, run_root_of(c), spec, events) == c[1:]
    with pytest.raises(CommitmentError, match="do not make"):
        assemble_roots(1, run_root_of(roots(5000, salt=1)), spec, events)
    with pytest.raises(CommitmentError, match="intervals"):
        assemble_roots(1, run_root_of(c), spec, events[1:])  # the last part missing
    with pytest.raises(CommitmentError, match="parts"):
        assemble_roots(1, run_root_of(c), spec, events[:-1])  # part 0 missing
    with pytest.raises(CommitmentError, match="parts"):
        assemble_roots(1, run_root_of(c), spec, [*events, events[0]])  # a part twice


def test_the_index_numbers_checkpoints_across_parts(tmp_path) -> None:
    """api.derive builds checkpoint rows C_0..C_m from the CheckpointRoots events of a
    three-part commitment (part p starts at C_{p * COMMIT_PART}, part 0 at C_1)."""
    from sqlalchemy import select

    from api.db import Checkpoint, Job, make_engine, make_sessions
    from api.seed import _Log, spec

    m = 2 * COMMIT_PART + 1
    c = ["0x" + r.hex() for r in roots(m)]
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'index.db'}"))
    with sessions.begin() as s:
        log = _Log(s, 1)
        sp = {**spec(1), "initial_root": c[0], "steps": m, "every": 1}
        log("JobRegistered", {"job_id": 1, "job_hash": c[1], "requester": c[0][:42],
                              "spec": sp, "reward": 1}, job_id=1)  # fmt: skip
        for p, rs in enumerate(commit_parts(c[1:])):
            log.next_block()
            log("CheckpointRoots", {"job_id": 1, "part": p, "roots": rs}, job_id=1)
        log("RunCommitted", {"job_id": 1, "trainer": c[0][:42], "run_root": c[2],
                             "challenge_deadline": 10**10}, job_id=1)  # fmt: skip
    with sessions.begin() as s:
        rows = s.scalars(select(Checkpoint).where(Checkpoint.job_id == 1)).all()
        assert sorted((r.index, r.root) for r in rows) == list(enumerate(c))
        assert s.get(Job, 1).run_root == c[2]
