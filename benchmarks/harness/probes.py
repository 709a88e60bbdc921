"""Status over the wire, one client per system kept open in this process (StatusProbe).

Status over the wire (server side) is timed with one client kept in this process, the request
encoded before the clock starts and the clock stopped when the whole reply has arrived, before any
decoding: procguard a ZeroMQ DEALER (`status`), circus a ZeroMQ DEALER (its `status` command, JSON),
supervisord XML-RPC `supervisor.getAllProcessInfo` over its UNIX socket (HTTP/1.0, one connection per
request: connecting to a UNIX socket costs microseconds).
"""

import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import zmq

from benchmarks.harness.run import BenchError

CTL_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Reply:
    """One status round trip: ms from sending the encoded request to having the whole reply, the reply's
    size, the processes it lists, and (procguard only) its rows."""

    ms: float
    size: int
    count: int
    rows: list[dict[str, Any]] = field(default_factory=list)


class StatusProbe:
    def status(self, long: bool = False) -> Reply:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "StatusProbe":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ZmqProbe(StatusProbe):
    """A DEALER kept connected: procguard's and circus's control sockets are both ZeroMQ ROUTERs."""

    def __init__(self, endpoint: str, procguard: bool) -> None:
        self.ctx = zmq.Context()
        self.sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.rcvtimeo = int(CTL_TIMEOUT_S * 1000)
        self.sock.connect(endpoint)
        self.endpoint = endpoint
        self.procguard = procguard

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def _frame(self, rid: str, long: bool) -> bytes:
        if self.procguard:
            from procguard.protocol import encode_request
            return encode_request("status", {"long": True} if long else {}, rid)
        # circus/client.py make_message + CircusClient.call: one JSON frame, reply carries the same id.
        return json.dumps({"id": rid, "command": "status", "properties": {}}).encode()

    def status(self, long: bool = False) -> Reply:
        rid = uuid.uuid4().hex
        frame = self._frame(rid, long)
        t0 = time.perf_counter()
        self.sock.send(frame)
        try:
            reply = self.sock.recv()
        except zmq.Again:
            raise BenchError(f"no reply to status from {self.endpoint} within {CTL_TIMEOUT_S}s") from None
        dt = (time.perf_counter() - t0) * 1e3
        msg = json.loads(reply)
        if self.procguard:
            if msg.get("id") != rid or msg.get("ok") is not True or not isinstance(msg.get("result"), list):
                raise BenchError(f"unexpected procguard reply: {reply[:300]!r}")
            return Reply(dt, len(reply), len(msg["result"]), msg["result"])
        if msg.get("id") != rid or msg.get("status") != "ok" or not isinstance(msg.get("statuses"), dict):
            raise BenchError(f"unexpected circus reply: {reply[:300]!r}")
        return Reply(dt, len(reply), len(msg["statuses"]))


class XmlRpcProbe(StatusProbe):
    """supervisord's XML-RPC over its UNIX socket: supervisor.getAllProcessInfo, as supervisorctl asks."""

    BODY = (b"<?xml version='1.0'?>\n<methodCall>\n<methodName>supervisor.getAllProcessInfo</methodName>\n"
            b"<params>\n</params>\n</methodCall>\n")

    def __init__(self, path: str) -> None:
        self.path = path
        self.request = (b"POST /RPC2 HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(self.BODY)) + self.BODY

    def status(self, long: bool = False) -> Reply:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(CTL_TIMEOUT_S)
        chunks = []
        try:
            t0 = time.perf_counter()
            s.connect(self.path)
            s.sendall(self.request)
            while True:  # HTTP/1.0: the server closes after the reply
                b = s.recv(1 << 16)
                if not b:
                    break
                chunks.append(b)
            dt = (time.perf_counter() - t0) * 1e3
        except TimeoutError:
            raise BenchError(f"no reply from supervisord at {self.path} within {CTL_TIMEOUT_S}s") from None
        finally:
            s.close()
        reply = b"".join(chunks)
        if not reply.startswith(b"HTTP/1.0 200") or b"<fault>" in reply:
            raise BenchError(f"unexpected supervisord reply: {reply[:300]!r}")
        return Reply(dt, len(reply), reply.count(b"<name>group</name>"))
