"""trainproof: optimistically verifiable ML training. The CLI lives in trainproof.cli."""
