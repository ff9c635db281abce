"""Data a job commits to: datasets, checkpoints, publishing them as blobs."""
