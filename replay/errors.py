"""Errors of the replay package. Each message names what is wrong."""

from protocol.errors import TrainproofError


class ExecutionError(TrainproofError):
    """A program cannot run on the state or batch it was given."""


class CheckpointError(TrainproofError):
    """A checkpoint or run folder is malformed, tampered with, or does not match its roots."""


class SpecError(TrainproofError):
    """A model or run specification cannot be compiled."""
