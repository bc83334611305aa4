"""FLARE client (Client API, in the client's job process): loads the global model, trains nothing, sends it back.

As in the Flower app, one weight per tensor changes by a client-specific amount, so every tensor is a real
update: the benchmark measures moving and aggregating models, not training.
"""

from __future__ import annotations

import argparse

import nvflare.client as flare
import torch
from nvflare.app_common.abstract.fl_model import FLModel

from model import make_model

EXAMPLES = 64


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="25M")
    args = parser.parse_args()
    flare.init()
    site = flare.get_site_name()
    suffix = site.rsplit("-", 1)[-1]
    nudge = 1e-4 * (1 + (int(suffix) if suffix.isdigit() else 0))
    while flare.is_running():
        received = flare.receive()
        model = make_model(args.params, initialise=False)
        model.load_state_dict(received.params)
        with torch.no_grad():
            for tensor in model.state_dict().values():
                tensor.view(-1)[0] += nudge
        flare.send(FLModel(params=model.state_dict(), meta={"NUM_STEPS_CURRENT_ROUND": EXAMPLES}))


if __name__ == "__main__":
    main()
