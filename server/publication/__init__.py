"""Publication of versions: the model publisher, pruning, the round epilogue, checkpoints and the run log."""
