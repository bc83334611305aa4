"""Protocol constants both ends agree on."""

PROTOCOL_VERSION = 1

# Initial metadata of an UploadUpdate call: the server has admitted the upload and reads its data now.
UPLOAD_ADMITTED_KEY = "fedstream-upload-admitted"

# Metadata of an UploadUpdate call: the session it belongs to, so the server can tell it from a stranger's call
# before the header arrives (calls without it are bounded as unauthenticated until their header is checked).
SESSION_KEY = "fedstream-session"
