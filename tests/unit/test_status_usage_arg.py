"""status's `usage` argument (procguardctl top) is a boolean like `long`."""

import pytest

from procguard.protocol import E_BAD_ARGS, ProtocolError, decode_request, encode_request


def test_status_takes_usage_as_a_boolean() -> None:
    assert decode_request(encode_request("status", {"usage": True})).args == {"usage": True}
    with pytest.raises(ProtocolError) as bad:
        decode_request(encode_request("status", {"usage": "yes"}))
    assert (bad.value.code, bad.value.message) == (E_BAD_ARGS, '"usage" must be true or false')
