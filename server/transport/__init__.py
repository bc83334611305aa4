"""The gRPC face of the server: the asyncio servicer, message conversion, status mapping and the server process."""
