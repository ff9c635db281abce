"""Executing the canonical IR: element semantics, the numpy reference, the torch backend,
the native kernels, state commitments of slot values."""
