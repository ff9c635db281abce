"""Errors raised on bad input. Each message names what is wrong and what to do."""


class TrainproofError(ValueError):
    """Base class: every input the protocol rejects raises a subclass of this."""


class CommitmentInputError(TrainproofError):
    """A tensor or slot value cannot be committed as given (dtype, layout, size)."""


class ProofError(TrainproofError):
    """A Merkle inclusion proof is malformed (index, tree size, length, node size)."""
