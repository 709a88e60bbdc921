"""Who may use the control socket: the ZAP handler (RFC 27) answering libzmq for every connection.

Over ipc:// a peer is admitted by its uid (root, the daemon's user, members of control_group), which
libzmq reads with SO_PEERCRED; over tcp:// by its CURVE public key. Anything else is refused.
"""

import grp
import os
import pwd
from dataclasses import dataclass

from procguard.config.model import Config
from procguard.log import get_logger

log = get_logger()

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27 (ZAP)
ZAP_DOMAIN = "procguard"


@dataclass(frozen=True, slots=True)
class Peer:
    """Who may talk to the daemon: uids and gids admitted over ipc://, public keys over tcp://."""

    uids: frozenset[int]
    gid: int | None
    group_members: frozenset[str]
    client_keys: frozenset[bytes]

    def admits_ipc(self, uid: int, gid: int) -> bool:
        if uid in self.uids:
            return True
        if self.gid is None:
            return False
        if gid == self.gid:
            return True
        try:
            return pwd.getpwuid(uid).pw_name in self.group_members
        except KeyError:
            return False


def peer_policy(config: Config) -> Peer:
    members: frozenset[str] = frozenset()
    if config.control_gid is not None:
        try:
            members = frozenset(grp.getgrgid(config.control_gid).gr_mem)
        except KeyError:
            pass
    keys: frozenset[bytes] = frozenset()
    if config.curve is not None:
        from zmq.auth import load_certificates  # CURVE (tcp://) only: not loaded for ipc:// (#17)

        keys = frozenset(load_certificates(config.curve.authorized_clients))
    return Peer(uids=frozenset({0, os.geteuid()}), gid=config.control_gid, group_members=members, client_keys=keys)


def authenticate(policy: Peer, is_ipc: bool, frames: list[bytes]) -> list[bytes]:
    """Answer one ZAP request: 200 admits, 400 refuses."""
    version, request_id, domain, address, _identity, mechanism = frames[:6]
    credentials = frames[6:]

    def answer(ok: bool, text: str, user: str = "") -> list[bytes]:
        return [version, request_id, b"200" if ok else b"400", text.encode(), user.encode(), b""]

    if domain != ZAP_DOMAIN.encode():
        return answer(False, "wrong domain")
    if mechanism == b"CURVE":
        from zmq.utils import z85

        key = z85.encode(credentials[0]) if credentials else b""
        if key in policy.client_keys:
            return answer(True, "OK", f"curve:{key.decode()}")
        log.warning("control_peer_refused", address=address.decode(errors="replace"), reason="unknown CURVE key")
        return answer(False, "client key not authorised")
    if mechanism == b"NULL" and is_ipc:
        # libzmq describes an ipc peer as "localhost:UID:GID:PID" from SO_PEERCRED.
        parts = address.decode(errors="replace").split(":")
        try:
            uid, gid, pid = int(parts[1]), int(parts[2]), int(parts[3])
        except (IndexError, ValueError):
            log.warning("control_peer_refused", address=address.decode(errors="replace"), reason="no peer credentials")
            return answer(False, "no peer credentials")
        if policy.admits_ipc(uid, gid):
            return answer(True, "OK", str(uid))
        log.warning("control_peer_refused", uid=uid, gid=gid, pid=pid,
                    reason="not root, the daemon's user, or in control_group")
        return answer(False, "uid not authorised")
    return answer(False, f"mechanism {mechanism.decode(errors='replace')} not accepted here")


def internal_error(frames: list[bytes]) -> list[bytes]:
    """The reply when answering failed: a reply must go out, or the REP socket wedges and no one gets in."""
    return [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"internal error", b"", b""]
