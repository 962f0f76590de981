"""AWS event-stream messages read with botocore's own parser, as boto3's
``invoke_endpoint_with_response_stream`` reads our answers."""

from __future__ import annotations

from botocore.eventstream import EventStreamBuffer


def read_messages(data: bytes) -> list[tuple[dict[str, str], bytes]]:
    """``(headers, payload)`` of every message in ``data``; botocore checks each length and
    CRC (raising its ``ChecksumMismatch`` on a bad one), and a message cut short is an
    AssertionError here (botocore would wait for its rest)."""
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    messages, length = [], 0
    for message in buffer:
        messages.append((dict(message.headers), message.payload))
        length += message.prelude.total_length
    assert length == len(data), f"{len(data) - length} bytes after the last whole message"
    return messages
