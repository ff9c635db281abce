"""Protocol constants, each defined exactly once (the Vyper side mirrors them in contracts/).

A test reads the deployed contracts' constants and asserts they equal these.
"""

from typing import Final

#: Bytes per tensor data chunk (DESIGN §4.2): 256 float32 elements.
#: Mirrors CHUNK_BYTES in contracts/commitments.vy.
CHUNK_BYTES: Final[int] = 1024

#: RFC 9162 domain-separation prefixes.
LEAF_PREFIX: Final[bytes] = b"\x00"
NODE_PREFIX: Final[bytes] = b"\x01"
#: Prefix of a tensor_root preimage: H(0x02 || dtype:u8 || numel:u64be || data_root).
TENSOR_PREFIX: Final[bytes] = b"\x02"

#: dtype codes of tensor commitments. v0 knows only float32.
DTYPE_FLOAT32: Final[int] = 1
#: Element size in bytes per dtype code.
DTYPE_ITEMSIZE: Final[dict[int, int]] = {DTYPE_FLOAT32: 4}

#: Largest numel a tensor commitment can carry (u64).
MAX_NUMEL: Final[int] = 2**64 - 1

#: Value of an empty state slot (DESIGN §4.2).
EMPTY_SLOT: Final[bytes] = b"\x00" * 32

#: Largest inclusion-proof length accepted anywhere (trees of up to 2**64 leaves).
MAX_PROOF_DEPTH: Final[int] = 64

#: Most checkpoint intervals per commitment (N / k): TrainProof.vy's MAX_CHECKPOINTS.
MAX_CHECKPOINTS: Final[int] = 65536
#: Leaves of the run tree per commit_run transaction (TrainProof.vy's COMMIT_PART): part p
#: carries C_i for p * COMMIT_PART <= i < (p + 1) * COMMIT_PART, C_0 excepted (docs/protocol.md
#: §3.3, :func:`protocol.game.commit_parts`).
COMMIT_PART: Final[int] = 2048
