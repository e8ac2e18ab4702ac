"""Standard Webhooks signing and verification, against the spec's own test vector."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

import pytest

from outbox.errors import ConfigurationError
from outbox.publish.signing import WebhookVerificationError, secret_key, sign, verify_webhook

# The worked example of the Standard Webhooks specification (and of its reference libraries).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
OTHER = "whsec_" + base64.b64encode(b"another key of 24 bytes!").decode()


def headers(signature: str = SIGNATURE, timestamp: int = TIMESTAMP) -> dict[str, str]:
    return {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_sign_gives_the_spec_vector_signature() -> None:
    assert sign(SECRET, MSG_ID, TIMESTAMP, BODY) == SIGNATURE
    assert sign(SECRET, MSG_ID, TIMESTAMP, BODY.decode()) == SIGNATURE
    assert sign(SECRET, MSG_ID, datetime.fromtimestamp(TIMESTAMP, UTC), BODY) == SIGNATURE


def test_the_secret_without_its_prefix_or_as_bytes_signs_the_same() -> None:
    bare = SECRET.removeprefix("whsec_")
    assert sign(bare, MSG_ID, TIMESTAMP, BODY) == SIGNATURE
    assert sign(base64.b64decode(bare), MSG_ID, TIMESTAMP, BODY) == SIGNATURE


def test_several_secrets_sign_once_each_in_order() -> None:
    both = sign([SECRET, OTHER], MSG_ID, TIMESTAMP, BODY)
    assert both.split(" ") == [SIGNATURE, sign(OTHER, MSG_ID, TIMESTAMP, BODY)]


def test_verify_accepts_the_spec_vector_and_returns_the_message_id() -> None:
    assert verify_webhook(BODY, headers(), SECRET, now=TIMESTAMP) == MSG_ID
    assert verify_webhook(BODY.decode(), headers(), SECRET, now=TIMESTAMP + 299) == MSG_ID


def test_verify_reads_header_names_in_any_case() -> None:
    shouted = {name.upper(): value for name, value in headers().items()}
    assert verify_webhook(BODY, shouted, SECRET, now=TIMESTAMP) == MSG_ID


def test_rotation_any_one_matching_signature_and_secret_is_enough() -> None:
    sent = f"v1,bm90IGl0 v2,whatever {SIGNATURE}"
    assert verify_webhook(BODY, headers(sent), [OTHER, SECRET], now=TIMESTAMP) == MSG_ID
    new_only = sign(OTHER, MSG_ID, TIMESTAMP, BODY)
    assert verify_webhook(BODY, headers(new_only), [SECRET, OTHER], now=TIMESTAMP) == MSG_ID


def test_a_changed_body_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="no webhook-signature matches"):
        verify_webhook(b'{"test": 2432232315}', headers(), SECRET, now=TIMESTAMP)


def test_a_wrong_secret_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="under the given secret"):
        verify_webhook(BODY, headers(), OTHER, now=TIMESTAMP)


def test_another_message_id_is_refused() -> None:
    forged = {**headers(), "webhook-id": "msg_other"}
    with pytest.raises(WebhookVerificationError, match="no webhook-signature matches"):
        verify_webhook(BODY, forged, SECRET, now=TIMESTAMP)


def test_an_old_or_future_timestamp_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="old, past the 300s tolerance"):
        verify_webhook(BODY, headers(), SECRET, now=TIMESTAMP + 301)
    with pytest.raises(WebhookVerificationError, match="ahead of this clock"):
        verify_webhook(BODY, headers(), SECRET, now=TIMESTAMP - 301)
    assert verify_webhook(BODY, headers(), SECRET, now=TIMESTAMP + 3000, tolerance=3600)


def test_a_request_signed_now_verifies_with_the_real_clock() -> None:
    import time

    now = int(time.time())
    signature = sign(SECRET, MSG_ID, now, BODY)
    assert verify_webhook(BODY, headers(signature, now), SECRET) == MSG_ID


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_named(missing: str) -> None:
    given = {k: v for k, v in headers().items() if k != missing}
    with pytest.raises(WebhookVerificationError, match=f"header {missing} missing"):
        verify_webhook(BODY, given, SECRET, now=TIMESTAMP)


@pytest.mark.parametrize("stamp", ["", "soon", "1614265330.5", "1e9"])
def test_a_timestamp_that_is_not_whole_seconds_is_refused(stamp: str) -> None:
    given = {**headers(), "webhook-timestamp": stamp}
    with pytest.raises(WebhookVerificationError, match="not whole Unix seconds"):
        verify_webhook(BODY, given, SECRET, now=TIMESTAMP)


@pytest.mark.parametrize(
    "signature", ["", "v1,", "v1,!!!", "g0hM9SsE+OTPJTGt", "v2," + SIGNATURE[3:]]
)
def test_malformed_signatures_are_refused(signature: str) -> None:
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, headers(signature), SECRET, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("whsec_", "empty"),
        ("", "empty"),
        (b"", "empty"),
        ("whsec_not base64!", "not valid base64"),
        (12, "a str"),
        ([], "no webhook secret given"),
    ],
)
def test_bad_secrets_are_refused_with_one_clear_error(secret: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        sign(secret, MSG_ID, TIMESTAMP, BODY)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=message):
        verify_webhook(BODY, headers(), secret, now=TIMESTAMP)  # type: ignore[arg-type]


def test_secret_key_decodes_the_whsec_form() -> None:
    assert secret_key(SECRET) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


def test_sign_refuses_a_timestamp_that_is_not_seconds() -> None:
    with pytest.raises(TypeError, match="whole seconds"):
        sign(SECRET, MSG_ID, 1614265330.5, BODY)  # type: ignore[arg-type]


def test_signing_needs_no_http_client() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['aiohttp'] = None; "
        "from outbox.publish.signing import verify_webhook; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tolerance": float("nan")}, "tolerance must be seconds, 0 or more, not nan"),
        ({"tolerance": -1}, "tolerance must be seconds, 0 or more, not -1"),
        ({"tolerance": "300"}, "tolerance must be seconds, 0 or more, not '300'"),
        ({"tolerance": None}, "tolerance must be seconds, 0 or more, not None"),
        ({"tolerance": float("inf")}, "tolerance must be seconds, 0 or more, not inf"),
        ({"now": "x"}, "now must be Unix seconds or None, not 'x'"),
        ({"now": float("nan")}, "now must be Unix seconds or None, not nan"),
    ],
)
def test_a_tolerance_or_clock_that_is_not_seconds_is_refused(
    options: dict[str, object], message: str
) -> None:
    """A NaN tolerance compared false with every skew: a request stamped in 1970 verified,
    and replay protection was gone."""
    stamped_1970 = sign(SECRET, MSG_ID, 1, BODY)
    with pytest.raises(ConfigurationError, match=f"^{re.escape(message)}"):
        verify_webhook(BODY, headers(stamped_1970, 1), SECRET, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "given", "message"),
    [
        ({"test": 2432232314}, None, "pass the raw request body as bytes or str, not dict"),
        (None, None, "pass the raw request body as bytes or str, not NoneType"),
        (BODY, [("webhook-id", MSG_ID)], "headers must be a mapping of names to values, not list"),
        (BODY, None, "header webhook-id must be a str, not bytes"),
    ],
)
def test_a_body_or_headers_of_the_wrong_type_are_refused(
    body: object, given: object, message: str
) -> None:
    if given is None and isinstance(body, bytes):
        given = {**headers(), "webhook-id": MSG_ID.encode()}
    with pytest.raises(ConfigurationError, match=f"^{re.escape(message)}"):
        verify_webhook(body, given or headers(), SECRET, now=TIMESTAMP)  # type: ignore[arg-type]


def test_sign_refuses_an_id_or_body_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match=r"^msg_id is the message id as a str, not int"):
        sign(SECRET, 5, TIMESTAMP, BODY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^body is the exact bytes sent \(or a str\), not dict"):
        sign(SECRET, MSG_ID, TIMESTAMP, {"test": 1})  # type: ignore[arg-type]


def test_an_id_that_is_not_valid_text_is_refused_not_crashed_on() -> None:
    given = {**headers(), "webhook-id": "msg_\ud800"}
    with pytest.raises(WebhookVerificationError, match="webhook-id is not valid text"):
        verify_webhook(BODY, given, SECRET, now=TIMESTAMP)


def test_headers_of_the_standard_library_and_frameworks_are_read() -> None:
    """http.server's headers (an email Message) and older Werkzeug's have items() but are no
    Mapping: they are read as before."""
    from email.message import Message

    received = Message()
    for name, value in headers().items():
        received[name] = value
    assert verify_webhook(BODY, received, SECRET, now=TIMESTAMP) == MSG_ID  # type: ignore[arg-type]
