"""Followers: `tail -f`, `maintail -f` and `events -f` clients, each pushed every new chunk or event.

A follower starts once its first reply is out (FollowStart) and lasts until the client leaves or the
daemon stops. Pushes never wait: a client too slow to keep up (SEND_HWM messages queued) loses
chunks, which it sees as a gap in the offsets; a client that left (EHOSTUNREACH) is dropped on the
next push.
"""

import asyncio
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import zmq
import zmq.asyncio

from procguard.io.stream import Follower
from procguard.observe.events import Event, EventBus
from procguard.protocol import encode_reply

# At most this much per pushed message (a firehose shows its newest bytes and an offset gap), and this
# many followers per stream and of the event stream (`events -f` clients, procguardctl top among them).
FOLLOW_MAX_PUSH = 256 * 1024
MAX_FOLLOWERS = 16
MAX_EVENT_FOLLOWERS = 64


class Followed(Protocol):
    """What tail -f follows: a process's output Stream, or the daemon's own log (LogRing)."""

    offset: int
    followers: set[Follower]

    def tail(self) -> bytes: ...


def b64(data: bytes) -> str:
    # base64.b64encode's output; binascii is the C module under it (base64.py: 58 KiB an idle daemon keeps, #17)
    return binascii.b2a_base64(data, newline=False).decode("ascii")


@dataclass(frozen=True, slots=True)
class FollowStart:
    """tail -f (or events -f): the first reply, then the stream to follow once it is sent."""

    first: dict[str, Any]
    stream: Followed | None  # None: the event stream, of `names`, from after `after_seq`
    request_id: str
    names: tuple[str, ...] = ()
    after_seq: int = 0


class Follow:
    """One `tail -f` client: every new chunk of its stream is pushed as a reply with "more": true."""

    def __init__(self, router: zmq.asyncio.Socket, envelope: list[bytes], request_id: str,
                 on_gone: Callable[["Follow"], None]) -> None:
        self._router = router
        self._envelope = envelope
        self._request_id = request_id
        self._on_gone = on_gone

    def __call__(self, data: bytes, offset: int) -> None:
        if len(data) > FOLLOW_MAX_PUSH:
            data = data[-FOLLOW_MAX_PUSH:]
        self._push({"data": b64(data), "offset": offset}, more=True)

    def end(self, stream: Followed, why: str) -> None:
        self._push({"data": "", "offset": stream.offset, "end": why}, more=False)
        self._on_gone(self)

    def _push(self, result: dict[str, Any], more: bool) -> None:
        frames = [*self._envelope, encode_reply(self._request_id, result, more=more)]
        # With NOBLOCK, zmq.asyncio returns a future that is already done (sent, Again or EHOSTUNREACH).
        sent = cast("asyncio.Future[Any]", self._router.send_multipart(frames, flags=zmq.NOBLOCK))
        sent.add_done_callback(self._sent)

    def _sent(self, fut: "asyncio.Future[Any]") -> None:
        exc = fut.exception() if not fut.cancelled() else None
        if isinstance(exc, zmq.ZMQError) and exc.errno == zmq.EHOSTUNREACH:
            self._on_gone(self)
        # zmq.Again: the client is behind; this chunk is skipped (its offset shows the gap).


class EventFollow(Follow):
    """One `events -f` client: each new event about its names is pushed as {"events": [event]}, "more": true."""

    def __init__(self, router: zmq.asyncio.Socket, envelope: list[bytes], request_id: str,
                 on_gone: Callable[["Follow"], None], names: tuple[str, ...]) -> None:
        super().__init__(router, envelope, request_id, on_gone)
        self._names = names

    def event(self, event: Event) -> None:
        if event.matches(self._names):
            self._push({"events": [event.to_wire()]}, more=True)

    def finish(self, why: str) -> None:
        self._push({"events": [], "end": why}, more=False)
        self._on_gone(self)


class Followers:
    """Every follower of one control socket: started after their first reply, ended at close."""

    def __init__(self, events: EventBus | None) -> None:
        self._events = events
        self._streams: dict[Follow, Followed] = {}
        self._event_followers: dict[Follow, Callable[[], None]] = {}  # -> unsubscribe

    def start(self, start: FollowStart, router: zmq.asyncio.Socket, envelope: list[bytes]) -> None:
        if start.stream is None:
            self._start_events(start, router, envelope)
            return
        follow = Follow(router, envelope, start.request_id, self._unfollow)
        self._streams[follow] = start.stream
        start.stream.followers.add(follow)

    def _start_events(self, start: FollowStart, router: zmq.asyncio.Socket, envelope: list[bytes]) -> None:
        """Subscribe once the first reply is out; push what was published meanwhile first (no gap)."""
        assert self._events is not None
        follow = EventFollow(router, envelope, start.request_id, self._unfollow_events, start.names)
        for event in self._events.recent(start.names):
            if event.seq > start.after_seq:
                follow.event(event)
        self._event_followers[follow] = self._events.subscribe(follow.event)

    def _unfollow(self, follow: Follow) -> None:
        stream = self._streams.pop(follow, None)
        if stream is not None:
            stream.followers.discard(follow)

    def _unfollow_events(self, follow: Follow) -> None:
        unsubscribe = self._event_followers.pop(follow, None)
        if unsubscribe is not None:
            unsubscribe()

    def of_events(self) -> int:
        """How many `events -f` clients there are."""
        return len(self._event_followers)

    def end_all(self, why: str) -> None:
        """Send every follower its last reply, saying why it ends."""
        for follow, stream in list(self._streams.items()):
            follow.end(stream, why)
        for event_follow in list(self._event_followers):
            assert isinstance(event_follow, EventFollow)
            event_follow.finish(why)
