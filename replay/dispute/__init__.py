"""The dispute side of replay: the op-level trace of a step and the reference players."""
