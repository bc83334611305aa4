"""Training helpers shared by the client and the server: data partitions, mixed precision, pruning masks."""
