"""Revert reasons of the commitment contracts, asserted with titanoboa.

Module-internal checks (merkle.vy) revert without a message and carry a `# dev:` comment,
which boa matches; user-facing checks revert with a reason string (also asserted on ape's
networks in test_contract_merkle.py).
"""

import boa
import pytest

HARNESS = "contracts/CommitmentHarness.vy"


@pytest.fixture(scope="module")
def harness():
    return boa.load(HARNESS)


@pytest.mark.parametrize(
    ("index", "size", "path_len", "dev"),
    [
        (5, 5, 3, "index out of range"),
        (0, 0, 0, "index out of range"),
        (0, 5, 2, "wrong proof length"),
        (0, 5, 4, "wrong proof length"),
    ],
)
def test_root_from_path_dev_reasons(harness, index, size, path_len, dev) -> None:
    with boa.reverts(dev=dev):
        harness.root_from_path(b"\x00" * 32, index, size, [b"\x11" * 32] * path_len)


def test_commit_tensor_is_write_once(harness) -> None:
    harness.commit_tensor(b"\x07" * 32, 3, b"\x00" * 32)
    with boa.reverts("harness: key already committed"):
        harness.commit_tensor(b"\x07" * 32, 3, b"\x00" * 32)
