"""EIP-712 coverage attestations: "interval c of commitment (job, run_root) replayed and matched".

Domain: name ``trainproof``, version ``1``, the chain id and the TrainProof address. A
challenger signs :data:`COVERAGE_TYPES`; the API recovers the signer, checks it is the
claimed challenger, that the timestamp is within the freshness window, and stores the digest
(unique) and (challenger, nonce) (unique) so an attestation can never be counted twice.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_utils import keccak, to_checksum_address

COVERAGE_TYPES: dict[str, list[dict[str, str]]] = {
    "Coverage": [
        {"name": "jobId", "type": "uint256"},
        {"name": "runRoot", "type": "bytes32"},
        {"name": "interval", "type": "uint256"},
        {"name": "challenger", "type": "address"},
        {"name": "timestamp", "type": "uint64"},
        {"name": "nonce", "type": "bytes32"},
    ]
}
#: Accept attestations signed at most this long ago ...
MAX_AGE_S = 600
#: ... or this far in the future (clock skew).
MAX_SKEW_S = 60


def domain(chain_id: int, contract: str) -> dict[str, Any]:
    return {
        "name": "trainproof",
        "version": "1",
        "chainId": chain_id,
        "verifyingContract": to_checksum_address(contract),
    }


def coverage_message(
    job_id: int, run_root: str, interval: int, challenger: str, timestamp: int, nonce: str
) -> dict[str, Any]:
    return {
        "jobId": job_id,
        "runRoot": bytes.fromhex(run_root.removeprefix("0x")),
        "interval": interval,
        "challenger": to_checksum_address(challenger),
        "timestamp": timestamp,
        "nonce": bytes.fromhex(nonce.removeprefix("0x")),
    }


def signable(chain_id: int, contract: str, message: dict[str, Any]) -> SignableMessage:
    return encode_typed_data(
        domain_data=domain(chain_id, contract), message_types=COVERAGE_TYPES, message_data=message
    )


def digest(msg: SignableMessage) -> str:
    return "0x" + keccak(b"\x19" + msg.version + msg.header + msg.body).hex()


def sign(private_key: str | bytes, chain_id: int, contract: str, **fields: Any) -> str:
    """A challenger's signature over a coverage message (used by clients and tests)."""
    signed = Account.sign_message(
        signable(chain_id, contract, coverage_message(**fields)), private_key
    )
    return "0x" + bytes(signed.signature).hex()


def recover(msg: SignableMessage, signature: str) -> str:
    return to_checksum_address(Account.recover_message(msg, signature=signature))
