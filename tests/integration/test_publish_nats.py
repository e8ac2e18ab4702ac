"""NatsJetStream against the machine's real NATS server with JetStream (127.0.0.1:4222, or
``OUTBOX_TEST_NATS_URL``): each test makes a stream of its own and deletes it after. The
broker-down tests run a private ``nats-server`` they can stop and start again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
import sqlalchemy as sa
import tenacity
from nats.js.api import RawStreamMsg
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

import outbox
from outbox.errors import ConfigurationError
from outbox.publish import (
    Delivery,
    Limits,
    Message,
    NatsJetStream,
    Publish,
    PublishFailed,
    PublishRejected,
)
from tests.integration.relay_harness import events, running_relay, scalar, wait_for

URL = os.environ.get("OUTBOX_TEST_NATS_URL", "nats://127.0.0.1:4222")
ROOT = Path(__file__).resolve().parents[2]
NATS_SERVER = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")


def admin(work: Callable[[Any], Any], url: str = URL) -> Any:
    """Run ``await work(jetstream)`` on a connection of its own."""

    async def run() -> Any:
        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            return await work(nc.jetstream(timeout=5))
        finally:
            await nc.close()

    return asyncio.run(run())


class Stream:
    """A stream of one test: subjects ``<prefix>.>``."""

    def __init__(self, url: str = URL, **config: Any) -> None:
        tag = uuid.uuid4().hex[:12]
        self.url, self.name, self.prefix = url, f"OUTBOX_TEST_{tag}", f"outbox-test-{tag}"
        admin(lambda js: js.add_stream(name=self.name, subjects=[f"{self.prefix}.>"], **config),
              url)  # fmt: skip

    def messages(self) -> list[RawStreamMsg]:
        """Every message stored, in stream order (as a consumer reads them)."""

        async def read(js: Any) -> list[RawStreamMsg]:
            info = await js.stream_info(self.name)
            first, last = info.state.first_seq, info.state.last_seq
            return (
                [await js.get_msg(self.name, seq) for seq in range(first, last + 1)]
                if (info.state.messages)
                else []
            )

        return admin(read, self.url)  # type: ignore[no-any-return]

    def count(self) -> int:
        async def count(js: Any) -> int:
            return (await js.stream_info(self.name)).state.messages  # type: ignore[no-any-return]

        return admin(count, self.url)  # type: ignore[no-any-return]

    def delete(self) -> None:
        with contextlib.suppress(Exception):
            admin(lambda js: js.delete_stream(self.name), self.url)


@pytest.fixture
def make_stream() -> Iterator[Callable[..., Stream]]:
    made: list[Stream] = []

    def make(url: str = URL, **config: Any) -> Stream:
        made.append(Stream(url, **config))
        return made[-1]

    yield make
    for stream in made:
        stream.delete()


@pytest.fixture
def stream(make_stream: Callable[..., Stream]) -> Stream:
    return make_stream(duplicate_window=600)


@pytest.fixture
def closing() -> Iterator[Callable[[NatsJetStream], NatsJetStream]]:
    """Targets closed at teardown, whatever the test did."""
    targets: list[NatsJetStream] = []
    yield lambda target: targets.append(target) or target  # type: ignore[func-returns-value]
    for target in targets:
        target.close()


def message(
    body: bytes = b'{"n":1}',
    *,
    key: str | None = "order:7",
    event: str | None = "order.paid",
    headers: dict[str, str] | None = None,
    id: uuid.UUID | None = None,
) -> Message:
    return Message(uuid=id or uuid.uuid4(), destination="feed", body=body, key=key, event=event,
                   headers={"tenant": "t1"} if headers is None else headers, attempt=1,
                   enqueued_at=datetime.now(UTC))  # fmt: skip


def header(msg: RawStreamMsg, name: str) -> str | None:
    return (msg.headers or {}).get(name)


# -- the target alone ---------------------------------------------------------------------


def test_messages_from_many_threads_arrive_once_each_under_their_uuid_in_key_order(
    stream: Stream, closing: Callable[[NatsJetStream], NatsJetStream]
) -> None:
    target = closing(NatsJetStream(URL, subject=f"{stream.prefix}.orders"))
    target.start(Limits(30, 60))
    sent: dict[str, list[Message]] = {
        f"order:{k}": [message(b'{"n":%d,"price":1.5}' % n, key=f"order:{k}") for n in range(40)]
        for k in range(8)
    }
    answers: list[Delivery] = []

    def publish_in_order(messages: list[Message]) -> None:  # one key's messages, in order
        answers.extend(target.publish(m) for m in messages)

    threads = [threading.Thread(target=publish_in_order, args=(ms,)) for ms in sent.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 320
    assert {a.outcome for a in answers} == {"delivered"}
    assert all(a.detail.startswith(f"stream {stream.name} seq ") for a in answers)
    stored = stream.messages()
    by_id = {header(m, "Nats-Msg-Id"): m for m in stored}
    assert len(stored) == len(by_id) == 320  # each once, under its job's uuid
    first = sent["order:3"][0]
    got = by_id[first.id]
    assert got.data == first.body
    assert got.subject == f"{stream.prefix}.orders"
    assert got.headers == {
        "tenant": "t1", "outbox-key": "order:3", "outbox-event": "order.paid",
        "Nats-Msg-Id": first.id, "Content-Type": "application/json",
    }  # fmt: skip
    for key, messages in sent.items():  # G4: a key's messages are stored in publish order
        assert [header(m, "Nats-Msg-Id") for m in stored if header(m, "outbox-key") == key] == [
            m.id for m in messages
        ]


def test_publishing_a_uuid_again_is_a_duplicate_and_stored_once(
    stream: Stream, closing: Callable[[NatsJetStream], NatsJetStream]
) -> None:
    target = closing(NatsJetStream(URL, subject=f"{stream.prefix}.orders"))
    again = message()
    first, second = target.publish(again), target.publish(again)
    assert first.outcome == "delivered"
    assert second.outcome == "duplicate"
    assert str(second) == f"duplicate: stream {stream.name} seq 1"
    assert stream.count() == 1


def test_a_batch_is_answered_per_message_and_a_refused_one_does_not_refuse_the_rest(
    stream: Stream, closing: Callable[[NatsJetStream], NatsJetStream]
) -> None:
    target = closing(NatsJetStream(URL, subject=f"{stream.prefix}.{{key}}"))
    again = message(key="a")
    target.publish(again)
    batch = [message(key="b"), message(key=None), again,
             message(key="c", headers={"Nats-Expected-Stream": "X"}), message(key="d")]  # fmt: skip
    answers = target.publish_many(batch)
    assert [type(a).__name__ for a in answers] == [
        "Delivery", "PublishRejected", "Delivery", "PublishRejected", "Delivery",
    ]  # fmt: skip
    assert [getattr(a, "outcome", None) for a in answers] == [
        "delivered", None, "duplicate", None, "delivered",
    ]  # fmt: skip
    assert [header(m, "Nats-Msg-Id") for m in stream.messages()] == [
        again.id, batch[0].id, batch[4].id,
    ]  # fmt: skip
    assert target.publish_many([]) == []


def test_a_subject_template_takes_the_key_and_the_event(
    stream: Stream, closing: Callable[[NatsJetStream], NatsJetStream]
) -> None:
    target = closing(NatsJetStream(URL, subject=f"{stream.prefix}.{{event}}.{{key}}"))
    target.publish(message(key="order-7", event="order.paid"))
    [stored] = stream.messages()
    assert stored.subject == f"{stream.prefix}.order.paid.order-7"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (None, "needs the message's key, and it has none: publish it with key=..."),
        ("order 7", "cannot be part of subject"),
        ("*", "cannot be part of subject"),
        ("a..b", "cannot be part of subject"),
    ],
)
def test_a_message_the_template_cannot_place_is_rejected_and_nothing_sent(
    stream: Stream, closing: Callable[[NatsJetStream], NatsJetStream], key: str | None,
    reason: str,
) -> None:  # fmt: skip
    target = closing(NatsJetStream(URL, subject=f"{stream.prefix}.{{key}}"))
    with pytest.raises(PublishRejected, match=reason.replace(".", r"\.").replace("*", r"\*")):
        target.publish(message(key=key))
    assert stream.count() == 0


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Nats-Expected-Stream": "OTHER"}, "reserved"),
        ({"bad name": "x"}, "cannot be sent over NATS"),
        ({"a": "line\r\nbreak"}, "line break"),
    ],
)
def test_a_header_nats_cannot_carry_or_that_steers_jetstream_is_rejected(
    stream: Stream, closing: Callable[[NatsJetStream], NatsJetStream],
    headers: dict[str, str], reason: str,
) -> None:  # fmt: skip
    target = closing(NatsJetStream(URL, subject=f"{stream.prefix}.orders"))
    with pytest.raises(PublishRejected, match=reason):
        target.publish(message(headers=headers))
    assert stream.count() == 0


def test_a_message_larger_than_the_stream_takes_is_rejected(
    make_stream: Callable[..., Stream], closing: Callable[[NatsJetStream], NatsJetStream]
) -> None:
    small = make_stream(max_msg_size=512)
    target = closing(NatsJetStream(URL, subject=f"{small.prefix}.orders"))
    with pytest.raises(PublishRejected, match="message size exceeds maximum"):
        target.publish(message(b'{"pad":"%s"}' % (b"x" * 1000)))
    assert target.publish(message()).outcome == "delivered"


def test_a_subject_no_stream_takes_fails_fast_and_goes_through_once_a_stream_does(
    make_stream: Callable[..., Stream], closing: Callable[[NatsJetStream], NatsJetStream]
) -> None:
    subject = f"outbox-test-{uuid.uuid4().hex[:12]}"
    target = closing(NatsJetStream(URL, subject=subject, timeout=2))
    with capture_logs() as logs:
        target.start(Limits(30, 60))
    assert any("no JetStream stream takes this subject" in e["event"] for e in logs)
    early = message()
    started = time.monotonic()
    with pytest.raises(PublishFailed, match=f"no JetStream stream takes subject '{subject}'"):
        target.publish(early)
    assert time.monotonic() - started < 2
    created = make_stream()
    admin(lambda js: js.update_stream(name=created.name, subjects=[f"{created.prefix}.>",
                                                                   subject]))  # fmt: skip
    assert target.publish(early).outcome == "delivered"


def test_start_warns_when_the_duplicate_window_is_shorter_than_lease_and_backoff(
    make_stream: Callable[..., Stream], closing: Callable[[NatsJetStream], NatsJetStream]
) -> None:
    short, long = make_stream(duplicate_window=10), make_stream(duplicate_window=3600)
    with capture_logs() as logs:
        closing(NatsJetStream(URL, subject=f"{short.prefix}.{{key}}")).start(Limits(30, 60))
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["stream"] == short.name
    assert (warning["duplicate_window_seconds"], warning["needed_seconds"]) == (10, 90)
    assert "would be stored twice" in warning["event"]
    assert "duplicate_window to at least 90s" in warning["event"]
    with capture_logs() as logs:
        closing(NatsJetStream(URL, subject=f"{long.prefix}.{{key}}")).start(Limits(30, 60))
    assert [e for e in logs if e["log_level"] == "warning"] == []


def test_an_unreachable_server_at_start_warns_and_publishes_fail_fast() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = NatsJetStream(f"nats://127.0.0.1:{port}", subject="orders", timeout=1)
    try:
        with capture_logs() as logs:
            target.start(Limits(30, 60))
        assert any("nats unreachable at start" in e["event"] for e in logs)
        started = time.monotonic()
        with pytest.raises(
            PublishFailed, match=f"cannot connect to NATS at nats://127.0.0.1:{port}"
        ):
            target.publish(message())
        assert time.monotonic() - started < 3
    finally:
        target.close()


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"url": "", "subject": "orders"}, "needs a server URL"),
        ({"url": "http://127.0.0.1:4222", "subject": "orders"}, "expected nats|tls|ws|wss://"),
        ({"url": "nats://127.0.0.1:99999", "subject": "orders"}, "is not usable"),
        ({"url": URL, "subject": ""}, "needs a subject"),
        ({"url": URL, "subject": "orders.*"}, "no wildcards"),
        ({"url": URL, "subject": "orders.>"}, "no wildcards"),
        ({"url": URL, "subject": "orders..paid"}, "single dots"),
        ({"url": URL, "subject": "my orders"}, "no whitespace"),
        ({"url": URL, "subject": "orders.{tenant}"}, r"only \{key\} and \{event\}, not \{tenant\}"),
        ({"url": URL, "subject": "orders.{key!r}"}, r"not \{key!r\}"),
        ({"url": URL, "subject": "orders.{key"}, "not a valid template"),
        ({"url": URL, "subject": "orders", "timeout": 0}, "timeout must be a number"),
        ({"url": URL, "subject": "orders", "timeout": "5"}, "timeout must be a number"),
        ({"url": URL, "subject": "orders", "timeout": float("inf")}, "timeout must be a number"),
        ({"url": URL, "subject": "orders", "tokn": "x"}, "nats.connect takes no option 'tokn'"),
    ],
)
def test_bad_constructor_input_is_refused_with_one_clear_error(
    arguments: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        NatsJetStream(**arguments)


def test_without_nats_py_the_target_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'outbox-relay\[nats\]'"):
        NatsJetStream(URL, subject="orders")


# -- a private server, to stop and start ----------------------------------------------------


class PrivateServer:
    """A nats-server with JetStream on a free port, its store in a test's directory."""

    def __init__(self, store: Path) -> None:
        if NATS_SERVER is None:
            pytest.skip("nats-server is not installed (apt-get install nats-server)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url, self.store = f"nats://127.0.0.1:{self.port}", store
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert NATS_SERVER is not None
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self.answers, 10, "the private nats-server to answer")

    def answers(self) -> bool:
        with contextlib.suppress(Exception):
            admin(lambda js: js.account_info(), self.url)
            return True
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[PrivateServer]:
    made = PrivateServer(tmp_path / "jetstream")
    made.start()
    yield made
    made.stop()


def test_a_server_down_fails_publishes_fast_and_they_go_through_once_it_is_back(
    nats_server: PrivateServer, closing: Callable[[NatsJetStream], NatsJetStream]
) -> None:
    feed = Stream(nats_server.url, duplicate_window=600)
    target = closing(NatsJetStream(nats_server.url, subject=f"{feed.prefix}.orders", timeout=1))
    target.start(Limits(30, 60))
    assert target.publish(message()).outcome == "delivered"
    nats_server.stop()
    during = message()
    started = time.monotonic()
    with pytest.raises(PublishFailed, match="no PubAck from JetStream within 1s"):
        target.publish(during)
    assert time.monotonic() - started < 3
    nats_server.start()
    # The connection comes back by itself; the failed message, sent again, is stored once
    # (nats-py may have sent it on reconnecting: then JetStream answers duplicate).
    answer = wait_for(lambda: _published(target, during), 15, "a publish after the restart")
    assert answer.outcome in ("delivered", "duplicate")
    ids = [header(m, "Nats-Msg-Id") for m in feed.messages()]
    assert len(ids) == len(set(ids)) == 2  # each once
    assert during.id in ids


def _published(target: NatsJetStream, sent: Message) -> Delivery | None:
    try:
        return target.publish(sent)
    except PublishFailed:
        return None


# -- through a relay ----------------------------------------------------------------------


def nats_registry(url: str, subject: str, **options: Any) -> outbox.Registry:
    registry = outbox.Registry()
    registry.destination("feed", NatsJetStream(url, subject=subject, timeout=1), **options)
    return registry


def test_through_a_relay_each_message_is_stored_once_in_key_order_and_history_says_where(
    db: sa.Engine, dsn: str, stream: Stream
) -> None:
    with Session(db) as session:
        handles = outbox.publish.publish_many(session, [
            Publish("feed", {"n": n, "price": 1.5}, key=f"order:{n % 5}", event="order.paid",
                    headers={"tenant": "t1"})
            for n in range(300)
        ])  # fmt: skip
        session.commit()
    with running_relay(nats_registry(URL, f"{stream.prefix}.{{key}}"), dsn):
        wait_for(lambda: stream.count() == 300, 30, "every message in the stream")
        wait_for(lambda: scalar(db, "SELECT count(*) FROM outbox_jobs") == 0, 10, "completions")
    stored = stream.messages()
    assert [header(m, "Nats-Msg-Id") for m in stored if m.subject == f"{stream.prefix}.order:0"] \
        == [str(h.uuid) for h in handles[::5]]  # fmt: skip
    assert {header(m, "Nats-Msg-Id") for m in stored} == {str(h.uuid) for h in handles}
    first = next(m for m in stored if header(m, "Nats-Msg-Id") == str(handles[0].uuid))
    assert first.data == b'{"n":0,"price":1.5}'
    assert (header(first, "outbox-event"), header(first, "tenant")) == ("order.paid", "t1")
    reason = scalar(db, "SELECT reason FROM outbox_history WHERE job_uuid = :u AND event = "
                        "'succeeded'", u=handles[0].uuid)  # fmt: skip
    assert reason == f"delivered: stream {stream.name} seq {first.seq}"


def test_a_key_the_subject_needs_but_a_message_lacks_ends_dead_with_the_reason(
    db: sa.Engine, dsn: str, stream: Stream
) -> None:
    with Session(db) as session:
        keyless = outbox.publish(session, "feed", {"n": 1})
        session.commit()
    with running_relay(nats_registry(URL, f"{stream.prefix}.{{key}}"), dsn):
        wait_for(lambda: "dead" in events(db, keyless.uuid), 10, "the keyless message dead")
    error = scalar(db, "SELECT error FROM outbox_history WHERE job_uuid = :u AND event = "
                       "'failed'", u=keyless.uuid)  # fmt: skip
    assert "needs the message's key, and it has none" in error["message"]
    assert stream.count() == 0


def test_a_server_down_for_20s_loses_nothing_and_delivers_all_once_it_is_back(
    db: sa.Engine, dsn: str, nats_server: PrivateServer
) -> None:
    feed = Stream(nats_server.url, duplicate_window=600)
    with Session(db) as session:
        before = outbox.publish.publish_many(
            session, [Publish("feed", {"n": n}, key=f"k{n % 4}") for n in range(50)]
        )
        session.commit()
    registry = nats_registry(nats_server.url, f"{feed.prefix}.{{key}}", max_attempts=100,
                             retry=tenacity.wait_fixed(1))  # fmt: skip
    with running_relay(registry, dsn):
        wait_for(lambda: feed.count() == 50, 20, "the first messages")
        nats_server.stop()
        down = time.monotonic()
        with Session(db) as session:
            during = outbox.publish.publish_many(
                session, [Publish("feed", {"n": n}, key=f"k{n % 4}") for n in range(50, 250)]
            )
            session.commit()
        wait_for(lambda: scalar(db, "SELECT count(*) FROM outbox_history WHERE event = "
                                    "'failed'") >= 4, 15, "failures while it is down")  # fmt: skip
        time.sleep(max(0.0, 20 - (time.monotonic() - down)))  # the outage lasts 20 s
        assert scalar(db, "SELECT count(*) FROM outbox_jobs WHERE state = 'dead'") == 0
        nats_server.start()
        wait_for(lambda: scalar(db, "SELECT count(*) FROM outbox_jobs") == 0, 40,
                 "every message once the server is back")  # fmt: skip
    stored = feed.messages()
    ids = [header(m, "Nats-Msg-Id") for m in stored]
    assert sorted(ids) == sorted(str(h.uuid) for h in [*before, *during])  # all, each once
    for key in range(4):  # G4 held through the outage
        sent = [int(m.data.split(b":")[1].rstrip(b"}")) for m in stored
                if m.subject == f"{feed.prefix}.k{key}"]  # fmt: skip
        assert sent == sorted(sent)


class RelayProcess:
    """``outbox relay`` running tests.integration.nats_app, as its own process group."""

    def __init__(self, dsn: str, log: Path, **env: str) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "outbox", "--dsn", dsn, "relay", "--app",
             "tests.integration.nats_app:registry", "--log-format", "json",
             "--metrics-addr", "off", "--concurrency", "4"],
            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "OUTBOX_LEASE": "3s", "OUTBOX_POLL_INTERVAL": "0.2s",
                 "OUTBOX_RESCUE_INTERVAL": "0.5s", **env},
            start_new_session=True,
        )  # fmt: skip

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def relay_processes(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    made: list[RelayProcess] = []

    def start(dsn: str, **env: str) -> RelayProcess:
        made.append(RelayProcess(dsn, tmp_path / f"relay-{len(made)}.log", **env))
        return made[-1]

    yield start
    for relay in made:
        relay.kill()


@pytest.mark.parametrize("window", [600, 1], ids=["window-covers", "window-too-short"])
def test_kill_9_between_the_ack_and_the_completion_publishes_again_under_the_same_id(
    db: sa.Engine, dsn: str, make_stream: Callable[..., Stream], tmp_path: Path,
    relay_processes: Callable[..., RelayProcess], window: int,
) -> None:  # fmt: skip
    feed = make_stream(duplicate_window=window)
    with Session(db) as session:
        handle = outbox.publish(session, "feed", {"amount": 5}, key="acct-1")
        session.commit()
    hold = tmp_path / "acked"
    env = {"OUTBOX_TEST_NATS_URL": URL, "OUTBOX_TEST_NATS_SUBJECT": f"{feed.prefix}.{{key}}"}
    first = relay_processes(dsn, OUTBOX_TEST_NATS_HOLD=str(hold), **env)
    wait_for(hold.exists, 20, "the broker's ack")
    first.kill()  # acked, never completed
    assert scalar(db, "SELECT state FROM outbox_jobs WHERE uuid = :u", u=handle.uuid) == "running"
    second = relay_processes(dsn, **env)
    wait_for(lambda: scalar(db, "SELECT count(*) FROM outbox_jobs") == 0, 30,
             "the job completed by the second relay")  # fmt: skip
    reason = scalar(db, "SELECT reason FROM outbox_history WHERE job_uuid = :u AND event = "
                        "'succeeded'", u=handle.uuid)  # fmt: skip
    stored = feed.messages()
    assert {header(m, "Nats-Msg-Id") for m in stored} == {str(handle.uuid)}
    if window == 600:  # JetStream recognised the id: stored once, the relay told duplicate
        assert len(stored) == 1
        assert reason == f"duplicate: stream {feed.name} seq 1"
    else:  # past the window, stored twice under one id: the warning said so at start
        assert len(stored) == 2
        assert reason == f"delivered: stream {feed.name} seq 2"
        assert "would be stored twice" in second.log.read_text()
    # The consumer applies it once, in its own transaction, however often it is stored.
    applied = []
    for stored_message in stored:
        with Session(db) as session:
            if outbox.inbox(session, "billing", header(stored_message, "Nats-Msg-Id")):
                applied.append(stored_message.seq)  # the consumer's effect, then its commit
            session.commit()
    assert applied == [1]
