"""EIP-712 coverage attestations: "interval c of commitment (job, run_root) replayed and matched".

Domain: name ``trainproof``, version ``1``, the chain id and the TrainProof address. A
challenger signs :data:`COVERAGE_TYPES` (``post`` signs a fresh one and sends it); the API
(``api/app.py``) recovers the signer, checks it is the claimed challenger, that the timestamp
is within the freshness window, and stores the digest (unique) and (challenger, nonce)
(unique) so an attestation can never be counted twice.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
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


def post(
    api_url: str,
    account: Any,
    chain_id: int,
    contract: str,
    *,
    job_id: int,
    run_root: str,
    interval: int,
    timeout: float = 10.0,
) -> tuple[int, str]:
    """Sign a fresh attestation (now, a random nonce) with ``account`` (an eth_account
    ``LocalAccount``) and POST it to the API at ``api_url``. Returns the HTTP status and the
    response body; status 0 when no answer came (the API is down or unreachable)."""
    fields = {
        "job_id": job_id,
        "run_root": run_root,
        "interval": interval,
        "challenger": to_checksum_address(account.address),
        "timestamp": int(time.time()),
        "nonce": "0x" + secrets.token_hex(32),
    }
    signed = account.sign_message(signable(chain_id, contract, coverage_message(**fields)))
    body = json.dumps({**fields, "signature": "0x" + bytes(signed.signature).hex()}).encode()
    req = urllib.request.Request(
        api_url.rstrip("/") + "/v1/attestations",
        body,
        {"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)
