"""Secure aggregation (SecAgg+, Bell et al. 2020): the network-free parts shared by client and server.

One module per job: `graph` (who shares with whom), `keys` (X25519, HKDF, AES-GCM share boxes), `shamir`
(t-of-n sharing of 32-byte secrets), `masks` (ChaCha20 mask windows), `encoding` (clip, weight, fixed point,
ring), `messages` (the dataclasses that travel), `client_protocol` and `server_protocol` (the four phases).
"""
