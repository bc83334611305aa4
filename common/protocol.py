"""Protocol constants both ends agree on."""

PROTOCOL_VERSION = 1
