"""Protocol constants both ends agree on."""

PROTOCOL_VERSION = 1

# Initial metadata of an UploadUpdate call: the server has admitted the upload and reads its data now.
UPLOAD_ADMITTED_KEY = "fedstream-upload-admitted"

# Metadata of an UploadUpdate call: the session it belongs to, so the server can tell it from a stranger's call
# before the header arrives (calls without it are bounded as unauthenticated until their header is checked).
SESSION_KEY = "fedstream-session"

# The longest a server holds a task poll, and what clients ask for: the server answers at once when their work
# changes, so a long poll costs no latency, while a short one costs calls (5 s polls from 10,000 idle clients
# were 2,000 calls a second, more than one server process accepts).
LONG_POLL_MS = 30_000
