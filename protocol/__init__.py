"""What prover, challenger and API share: hashing, commitments, messages, the chain client."""
