"""A team in another language, against eventbus: the official CloudEvents SDK for Python
(PyPI `cloudevents`) with nats-py. Run by tests/tests/cloudevents.rs with the venv of
scripts/install-foreign-clients.sh.

  cloudevents_sdk.py URL produce MODE SUBJECT ATTRIBUTES_JSON DATA_JSON
      Builds a CloudEvent with the SDK and publishes it to JetStream on SUBJECT.
      MODE: binary (the SDK's headers as they are), binary-mixed-case (header names as Go's
      net/http writes them: Ce-Id, Content-Type), structured (application/cloudevents+json).
      Prints the SDK's headers as JSON.
  cloudevents_sdk.py URL read STREAM SUBJECT
      Reads the last message on SUBJECT from STREAM and parses it with the SDK (binary mode,
      or structured when its content type says so); prints its attributes and data as JSON.
"""

import asyncio
import json
import sys

import nats
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http,
    to_binary,
    to_structured,
)
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent


def mixed_case(name: str) -> str:
    return "-".join(part[:1].upper() + part[1:] for part in name.split("-"))


async def produce(url: str, mode: str, subject: str, attributes: dict, data: dict) -> None:
    event = CloudEvent(attributes=attributes, data=data)
    if mode == "structured":
        message = to_structured(event, JSONFormat())
    else:
        message = to_binary(event, JSONFormat())
    headers = dict(message.headers)
    if mode == "binary-mixed-case":
        headers = {mixed_case(k): v for k, v in headers.items()}
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(subject, message.body, headers=headers, timeout=10)
    finally:
        await nc.close()
    print(json.dumps(headers))


async def read(url: str, stream: str, subject: str) -> None:
    nc = await nats.connect(url)
    try:
        msg = await nc.jetstream().get_last_msg(stream, subject)
    finally:
        await nc.close()
    headers = {k: v for k, v in (msg.headers or {}).items()}
    event = from_http(HTTPMessage(headers=headers, body=msg.data or b""), JSONFormat())
    attributes = {
        k: (v.isoformat() if hasattr(v, "isoformat") else v)
        for k, v in event.get_attributes().items()
    }
    print(json.dumps({"attributes": attributes, "data": event.get_data()}))


def main() -> None:
    url, command, *rest = sys.argv[1:]
    if command == "produce":
        mode, subject, attributes, data = rest
        asyncio.run(produce(url, mode, subject, json.loads(attributes), json.loads(data)))
    elif command == "read":
        stream, subject = rest
        asyncio.run(read(url, stream, subject))
    else:
        sys.exit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
