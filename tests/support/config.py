"""Config messages as a sidecar receives them: packed in protobuf `Any`."""

from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.message import Message


def pack(*messages: Message) -> list[AnyPb]:
    """Each message in an `Any`, as a config response carries its resources."""
    items = []
    for message in messages:
        item = AnyPb()
        item.Pack(message)
        items.append(item)
    return items
