"""Flower ClientApp (thin): a "train" message in, the local update out. The work is in `task.py`."""

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from components.federated.flower_driver import client_train, client_warm_up, from_array_record, to_array_record

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = dict(msg.content["config"])
    update = client_train(config, from_array_record(msg.content["arrays"]))
    content = RecordDict(
        {
            "delta": to_array_record(update["delta"]),
            "metrics": MetricRecord(
                {"num_examples": update["num_examples"], "steps": update["steps"], "train_loss": update["train_loss"]}
            ),
        }
    )
    if update["buffers"]:
        content["buffers"] = to_array_record(update["buffers"])
    return Message(content=content, reply_to=msg)


@app.query()
def warm_up(msg: Message, context: Context) -> Message:
    samples = client_warm_up(dict(msg.content["config"]))
    return Message(content=RecordDict({"metrics": MetricRecord({"num_examples": samples})}), reply_to=msg)


__all__ = ["app"]
