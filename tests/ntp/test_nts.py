"""NTS (RFC 8915): cookies, key rotation and storage, the protected exchange, NTS-KE records."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from netpost.ntp import nts
from netpost.ntp.keys import KeyStore
from netpost.ntp.ntske import (
    NTSKEConnection,
    Record,
    RecordType,
    decode_records,
    encode_records,
    exporter_context,
)
from netpost.ntp.packet import NTPPacket, decode

C2S, S2C = os.urandom(32), os.urandom(32)


def keys() -> nts.CookieKeys:
    return nts.CookieKeys([nts.CookieKey(7, os.urandom(32), 0.0)])


def test_cookie_round_trip_and_refusals() -> None:
    jar = keys()
    cookie = jar.make_cookie(C2S, S2C)
    assert len(cookie) == nts.COOKIE_SIZE == 100
    assert jar.open_cookie(cookie) == (C2S, S2C)
    assert jar.make_cookie(C2S, S2C) != cookie  # a fresh nonce each time (unlinkable)
    tampered = cookie[:-1] + bytes([cookie[-1] ^ 1])
    assert jar.open_cookie(tampered) is None
    assert keys().open_cookie(cookie) is None  # another server's key
    assert jar.open_cookie(cookie[:50]) is None


def test_key_store_rotates_keeps_old_keys_and_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "ntp" / "nts-keys.json"
    store = KeyStore(path, rotation=100.0, keep=3)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    first = store.keys.make_cookie(C2S, S2C)
    assert not store.rotate_if_due()
    assert store.rotate_if_due(now=store.keys.current.created + 101)
    assert len(store.keys.keys) == 2
    second = store.keys.make_cookie(C2S, S2C)
    # RFC 8915 §6: cookies made before the rotation still open.
    assert store.keys.open_cookie(first) == (C2S, S2C)
    # A restart reads the same keys: both cookies still open.
    again = KeyStore(path, rotation=100.0, keep=3)
    assert again.keys.open_cookie(first) == (C2S, S2C)
    assert again.keys.open_cookie(second) == (C2S, S2C)
    assert again.keys.current.key_id == store.keys.current.key_id
    # Only `keep` keys are kept: the oldest key's cookies stop working.
    again.rotate()
    again.rotate()
    assert len(again.keys.keys) == 3 and again.keys.open_cookie(first) is None
    assert len(json.loads(path.read_text())["keys"]) == 3


def test_damaged_key_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nts-keys.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a key file"):
        KeyStore(path, rotation=1.0, keep=1)


def request(jar: nts.CookieKeys, placeholders: int = 0, uid: bytes = bytes(range(32))
            ) -> tuple[bytes, NTPPacket]:
    data = nts.client_request(NTPPacket(transmit_timestamp=12345), C2S,
                              jar.make_cookie(C2S, S2C), placeholders, uid)
    return data, decode(data)


@pytest.mark.parametrize("placeholders", range(8))
def test_response_carries_fresh_cookies_and_is_never_larger(placeholders: int) -> None:
    jar = keys()
    data, packet = request(jar, placeholders)
    checked = nts.check_request(packet, data, jar)
    assert isinstance(checked, nts.NTSRequest)
    assert (checked.c2s, checked.s2c) == (C2S, S2C)
    assert checked.cookies_wanted == placeholders + 1
    header = NTPPacket(mode=4, stratum=3, origin_timestamp=12345)
    reply = nts.seal_response(header, checked, jar, len(data))
    assert reply is not None
    assert len(reply) <= len(data)  # RFC 8915 §5.7: no amplification
    cookies = nts.open_response(reply, decode(reply), S2C, bytes(range(32)))
    assert len(cookies) == placeholders + 1
    assert all(jar.open_cookie(c) == (C2S, S2C) for c in cookies)
    with pytest.raises(ValueError):
        nts.open_response(reply, decode(reply), C2S, bytes(range(32)))  # wrong key
    with pytest.raises(ValueError):
        nts.open_response(reply, decode(reply), S2C, bytes(32))  # not our request


def test_response_shrinks_to_the_request() -> None:
    jar = keys()
    data, packet = request(jar, placeholders=3)
    checked = nts.check_request(packet, data, jar)
    assert isinstance(checked, nts.NTSRequest)
    header = NTPPacket(mode=4)
    reply = nts.seal_response(header, checked, jar, len(data) - 200)
    assert reply is not None and len(reply) <= len(data) - 200
    assert len(nts.open_response(reply, decode(reply), S2C, bytes(range(32)))) == 2
    assert nts.seal_response(header, checked, jar, 100) is None


def test_bad_requests_are_rejected() -> None:
    jar = keys()
    data, packet = request(jar)
    # A flipped bit anywhere in the authenticated part: the authenticator fails.
    broken = bytearray(data)
    broken[40] ^= 1
    reject = nts.check_request(decode(bytes(broken)), bytes(broken), jar)
    assert isinstance(reject, nts.NTSReject) and reject.unique_id is not None
    # A cookie of another server: NAK with the unique identifier.
    other_data, other = request(keys())
    reject = nts.check_request(other, other_data, jar)
    assert isinstance(reject, nts.NTSReject) and reject.reason == "cookie not valid"
    assert reject.unique_id is not None and reject.unique_id.value == bytes(range(32))
    # A unique identifier too short: nothing to echo, dropped.
    short_data, short = request(jar, uid=bytes(16))
    reject = nts.check_request(short, short_data, jar)
    assert isinstance(reject, nts.NTSReject) and reject.unique_id is None


def test_ntske_answers_with_protocol_algorithm_port_and_eight_cookies() -> None:
    conn = NTSKEConnection(ntp_server=None, ntp_port=10123)
    req = encode_records([Record(RecordType.NEXT_PROTOCOL, b"\0\0", True),
                          Record(RecordType.AEAD_ALGORITHM, struct.pack("!HH", 17, 15)),
                          Record(RecordType.END_OF_MESSAGE, b"", True)])
    assert not conn.receive_data(req[:5])
    assert conn.receive_data(req[5:])
    records, used = decode_records(conn.response(lambda aead: [bytes([aead]) * 100] * 8))
    kinds = [r.record_type for r in records]
    assert kinds == [1, 4, 7, *[5] * 8, 0]
    assert records[1].body == struct.pack("!H", 15)
    assert records[2].body == struct.pack("!H", 10123) and records[2].critical
    assert records[3].body == bytes([15]) * 100


def test_ntske_errors() -> None:
    def answer(*records: Record) -> list[Record]:
        conn = NTSKEConnection(ntp_server="time.example", ntp_port=123)
        conn.receive_data(encode_records(list(records)))
        return decode_records(conn.response(lambda aead: [b"c" * 100] * 8))[0]

    eom = Record(RecordType.END_OF_MESSAGE, b"", True)
    # RFC 8915 §4.1.3: an unknown critical record -> error 0.
    out = answer(Record(RecordType.NEXT_PROTOCOL, b"\0\0", True), Record(99, b"", True), eom)
    assert out[0] == Record(RecordType.ERROR, b"\0\0", True)
    # No Next Protocol record -> bad request (1).
    assert answer(eom)[0] == Record(RecordType.ERROR, b"\0\1", True)
    # No algorithm in common -> an empty AEAD record, no cookies.
    out = answer(Record(RecordType.NEXT_PROTOCOL, b"\0\0", True),
                 Record(RecordType.AEAD_ALGORITHM, b"\0\1"), eom)
    assert [r.record_type for r in out] == [1, 4, 0] and out[1].body == b""
    # The server record when configured (and no port record for 123).
    out = answer(Record(RecordType.NEXT_PROTOCOL, b"\0\0", True),
                 Record(RecordType.AEAD_ALGORITHM, b"\0\x0f"), eom)
    assert out[2] == Record(RecordType.SERVER, b"time.example", True)
    assert [r.record_type for r in out].count(RecordType.PORT) == 0


def test_exporter_context() -> None:
    assert exporter_context(15, False) == b"\0\0\0\x0f\0"
    assert exporter_context(15, True) == b"\0\0\0\x0f\1"
