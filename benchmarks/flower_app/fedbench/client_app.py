"""Flower client: loads the global model, trains nothing (the benchmark measures moving models), returns it.

"Nothing" still changes one weight per tensor, by a client-specific amount: Flower stores arrays by content
hash and skips uploading arrays the SuperLink already holds, so returning the global model unchanged would
upload nothing. Real training changes every array; so does this.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedbench.model import make_model

app = ClientApp()
EXAMPLES = 64


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = make_model(str(context.run_config["params"]), initialise=False)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    nudge = 1e-4 * (1 + int(context.node_config.get("partition-id", 0)))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.view(-1)[0] += nudge
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": EXAMPLES})})
    return Message(content=content, reply_to=msg)
