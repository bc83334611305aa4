"""Wire format shared by both ends: chunk framing, manifests, raw tensor bytes, protocol constants, channel options."""
