"""Certificates and TLS credentials for a federation."""
