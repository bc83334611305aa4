"""`python -m fedstream.client ...` is `fedstream client ...` (torchrun launches clients this way)."""

import sys

from fedstream.cli import main

sys.exit(main(["client", *sys.argv[1:]]))
