"""Hand-rolled protobuf encoding for the hot path of ``Streams.Read``.

Every stored event keeps the serialized ``ReadResp`` it is sent as, built once when the event
is written (or loaded), so a read streams stored bytes without touching protobuf objects. The
encoding is byte-for-byte what the generated ``streams_pb2`` classes produce with
``SerializeToString(deterministic=True)`` (fields in number order, map keys sorted, default
values omitted); ``tests/devserver/test_wire.py`` holds the two equal.

Rare messages (confirmation, stream-not-found) are built with the generated classes instead.
Checkpoint and caught-up messages are hand-encoded because they carry fields (timestamps,
resume positions) that only newer protocol versions declare.
"""

from __future__ import annotations

from esdbclient.protos.Grpc import shared_pb2, streams_pb2

JSON_CONTENT_TYPE = "application/json"
OCTET_STREAM_CONTENT_TYPE = "application/octet-stream"

# Wire tags: (field number << 3) | wire type, where 0 = varint and 2 = length-delimited.
_TAG_1_LEN = b"\x0a"
_TAG_2_LEN = b"\x12"
_TAG_3_LEN = b"\x1a"
_TAG_3_VARINT = b"\x18"
_TAG_4_VARINT = b"\x20"
_TAG_5_VARINT = b"\x28"
_TAG_6_LEN = b"\x32"
_TAG_7_LEN = b"\x3a"
_TAG_8_LEN = b"\x42"

_SMALL_VARINTS = [bytes((n,)) for n in range(128)]


def varint(value: int) -> bytes:
    """Encode a non-negative integer as a protobuf base-128 varint."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    # Lengths, revisions and positions almost always fit in 2-4 bytes: skip the loop.
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x20_0000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    if value < 0x1000_0000:
        return bytes(
            (
                (value & 0x7F) | 0x80,
                ((value >> 7) & 0x7F) | 0x80,
                ((value >> 14) & 0x7F) | 0x80,
                value >> 21,
            )
        )
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def _nested(outer_tag: bytes, inner_tag: bytes, payload: bytes) -> bytes:
    # {outer: {inner: payload}}, e.g. RecordedEvent.id = UUID{string}.
    n = len(payload)
    if n < 126:  # both lengths fit in one byte
        return b"".join((outer_tag, _SMALL_VARINTS[n + 2], inner_tag, _SMALL_VARINTS[n], payload))
    return _field(outer_tag, _field(inner_tag, payload))


def _map_entry(key: bytes, value: str) -> bytes:
    # A map<string, string> entry is a nested message {1: key, 2: value}.
    return _field(_TAG_6_LEN, _field(_TAG_1_LEN, key) + _field(_TAG_2_LEN, value.encode()))


# The metadata entries repeat from event to event: build each distinct one once.
_CONTENT_TYPE_ENTRIES = {
    True: _map_entry(b"content-type", JSON_CONTENT_TYPE),
    False: _map_entry(b"content-type", OCTET_STREAM_CONTENT_TYPE),
}
_TYPE_ENTRIES: dict[str, bytes] = {}
_MAX_CACHED_TYPES = 10_000
_last_created: tuple[int, bytes] = (-1, b"")


def _type_entry(event_type: str) -> bytes:
    entry = _TYPE_ENTRIES.get(event_type)
    if entry is None:
        entry = _map_entry(b"type", event_type)
        if len(_TYPE_ENTRIES) < _MAX_CACHED_TYPES:
            _TYPE_ENTRIES[event_type] = entry
    return entry


def _created_entry(created: int) -> bytes:
    # All events of one write share their timestamp.
    global _last_created
    value, entry = _last_created
    if value != created:
        entry = _map_entry(b"created", str(created))
        _last_created = (created, entry)
    return entry


def encode_recorded_event(
    *,
    event_id: str,
    stream_name: bytes,
    revision: int,
    position: int,
    event_type: str,
    is_json: bool,
    created: int,
    custom_metadata: bytes,
    data: bytes,
) -> bytes:
    """Serialize one ``ReadResp.ReadEvent.RecordedEvent``.

    The ``metadata`` map carries exactly ``type``, ``content-type`` (collapsed to JSON or
    octet-stream, as the real server stores only an is-JSON flag) and ``created`` (100-ns
    ticks since the Unix epoch, as a decimal string). ``commit_position`` and
    ``prepare_position`` are both ``position``.
    """
    parts = [_nested(_TAG_1_LEN, _TAG_2_LEN, event_id.encode())]
    parts.append(_nested(_TAG_2_LEN, _TAG_3_LEN, stream_name))
    if revision:
        parts.append(_TAG_3_VARINT + varint(revision))
    if position:
        pos = varint(position)
        parts.append(_TAG_4_VARINT + pos + _TAG_5_VARINT + pos)
    # Map entries in key order, as protobuf's deterministic serialization writes them.
    parts.append(_CONTENT_TYPE_ENTRIES[is_json])
    parts.append(_created_entry(created))
    parts.append(_type_entry(event_type))
    if custom_metadata:
        parts.append(_field(_TAG_7_LEN, custom_metadata))
    if data:
        parts.append(_field(_TAG_8_LEN, data))
    return b"".join(parts)


def read_resp_event(record: bytes, position: int) -> tuple[bytes, int]:
    """Wrap a serialized RecordedEvent as ``ReadResp{event: ReadEvent{event, commit_position}}``.

    Returns the message and the offset at which ``record`` starts inside it, so the record can
    be sliced back out (to resolve links) without keeping a second copy.
    """
    record_len = varint(len(record))
    pos = varint(position)
    outer_len = varint(1 + len(record_len) + len(record) + 1 + len(pos))
    wire = b"".join((_TAG_1_LEN, outer_len, _TAG_1_LEN, record_len, record, _TAG_3_VARINT, pos))
    return wire, 1 + len(outer_len) + 1 + len(record_len)


def read_resp_link(target: bytes | None, link: bytes, link_position: int) -> bytes:
    """A resolved link: ``event`` is the target (unset if it is gone), ``link`` the link record.

    ``ReadEvent.commit_position`` is the position of the link itself, as on the real server.
    """
    read_event = _field(_TAG_2_LEN, link) + _TAG_3_VARINT + varint(link_position)
    if target is not None:
        read_event = _field(_TAG_1_LEN, target) + read_event
    return _field(_TAG_1_LEN, read_event)


def read_resp_confirmation(subscription_id: str) -> bytes:
    """``ReadResp{confirmation{subscription_id}}``."""
    msg = streams_pb2.ReadResp(
        confirmation=streams_pb2.ReadResp.SubscriptionConfirmation(subscription_id=subscription_id)
    )
    return bytes(msg.SerializeToString())


def _timestamp(now_ns: int) -> bytes:
    # google.protobuf.Timestamp{seconds = 1, nanos = 2}, both varints.
    seconds, nanos = divmod(now_ns, 1_000_000_000)
    return b"\x08" + varint(seconds) + (b"\x10" + varint(nanos) if nanos else b"")


def read_resp_checkpoint(position: int, now_ns: int) -> bytes:
    """``ReadResp{checkpoint{commit_position, prepare_position, timestamp}}``.

    ``timestamp`` (field 3) is what servers from 24.x on add and ``kurrentdbclient`` reads as
    the checkpoint's ``recorded_at``; older clients skip it as an unknown field.
    """
    pos = varint(position)
    checkpoint = b"\x08" + pos + b"\x10" + pos + _field(_TAG_3_LEN, _timestamp(now_ns))
    return _field(_TAG_3_LEN, checkpoint)


def read_resp_caught_up(now_ns: int, *, revision: int | None, position: int | None) -> bytes:
    """``ReadResp{caught_up{timestamp, stream_revision, position}}`` (the newer protocol).

    ``stream_revision`` (a stream subscription's last revision) and ``position`` (a ``$all``
    subscription's resume point) are left out when the source is empty, as on the real server.
    Clients of the older protocol see an empty ``CaughtUp`` and ignore the fields.
    """
    body = _field(_TAG_1_LEN, _timestamp(now_ns))
    if revision is not None:
        body += b"\x10" + varint(revision)
    if position is not None:
        pos = varint(position)
        body += _field(_TAG_3_LEN, b"\x08" + pos + b"\x10" + pos)
    return _field(_TAG_8_LEN, body)


def read_resp_stream_not_found(stream_name: str) -> bytes:
    """``ReadResp{stream_not_found{stream_identifier}}``."""
    msg = streams_pb2.ReadResp(
        stream_not_found=streams_pb2.ReadResp.StreamNotFound(
            stream_identifier=shared_pb2.StreamIdentifier(stream_name=stream_name.encode())
        )
    )
    return bytes(msg.SerializeToString())


def persistent_read_resp(
    event: bytes | None, link: bytes | None, position: int, retry_count: int
) -> bytes:
    """``persistent.ReadResp{event: ReadEvent{event, link, commit_position, retry_count}}``.

    The persistent ``RecordedEvent`` has the same fields as the streams one, so stored records
    are embedded as they are. ``event`` None (a link whose target is gone) leaves it unset,
    which clients skip.
    """
    read_event = b""
    if event is not None:
        read_event += _field(_TAG_1_LEN, event)
    if link is not None:
        read_event += _field(_TAG_2_LEN, link)
    # commit_position = 3 (varint); retry_count = 5 (varint; set even when 0, it is in a oneof).
    read_event += _TAG_3_VARINT + varint(position) + _TAG_5_VARINT + varint(retry_count)
    return _field(_TAG_1_LEN, read_event)
