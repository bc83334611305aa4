"""The coordinator core: sessions, task dispatch, transfers and publication in plain Python (no grpc, no protobuf)."""
