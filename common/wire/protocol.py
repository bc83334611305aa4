"""Protocol constants both ends agree on."""

PROTOCOL_VERSION = 1

# Initial metadata of an UploadUpdate call: the server has admitted the upload and reads its data now.
UPLOAD_ADMITTED_KEY = "fedstream-upload-admitted"
