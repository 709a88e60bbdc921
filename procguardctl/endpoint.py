"""Which daemon procguardctl talks to, and with which CURVE keys.

-s ENDPOINT, else $PROCGUARD_CONTROL, else the config file (-c, $PROCGUARD_CONFIG, DEFAULT_CONFIG if
present), else the default endpoint for this uid (docs/protocol.md).
"""

import os
from typing import NamedTuple

from procguard.protocol import ROOT_ENDPOINT, default_endpoint, ipc_path, resolve_endpoint

DEFAULT_CONFIG = "/etc/procguard/procguard.toml"


class ClientSettings(NamedTuple):
    """What procguardctl learns from the daemon's config file: where to connect and with which keys."""

    endpoint: str
    server_public_key_file: str | None = None
    client_secret_key_file: str | None = None


def client_settings_from_config(path: str) -> ClientSettings:
    """Read only the [procguard] control keys of a config file (raises OSError, ValueError)."""
    import tomllib  # only procguardctl -c needs it; keeps `procguardctl` start-up lean

    with open(path, "rb") as f:
        data = tomllib.load(f)
    section = data.get("procguard", {})
    here = os.path.dirname(os.path.abspath(path))
    control = section.get("control")
    if isinstance(control, str):
        endpoint = resolve_endpoint(control, here)
    elif os.stat(path).st_uid == 0:
        # No control key: the daemon uses its own default. A root-owned config is a root daemon's,
        # whose default is /run/procguard (not the one for this client's uid).
        endpoint = ROOT_ENDPOINT
    else:
        endpoint = default_endpoint()
    curve = section.get("curve", {})
    server_public = client_secret = None
    if isinstance(curve, dict):
        secret = curve.get("server_secret_key")
        if isinstance(secret, str):
            # The public half sits beside the secret (procguardctl keygen writes NAME.key and NAME.key_secret).
            public = os.path.join(here, secret)
            server_public = public[: -len("_secret")] if public.endswith("_secret") else public
        cs = curve.get("client_secret_key")
        if isinstance(cs, str):
            client_secret = os.path.join(here, os.path.expanduser(cs))
    return ClientSettings(endpoint, server_public, client_secret)


def server_endpoint(url: str) -> str:
    """supervisorctl's `unix:///path` is our `ipc:///path`; other endpoints as given (raises ValueError)."""
    if url.startswith("unix://"):
        return "ipc://" + url[len("unix://"):]
    if url.startswith(("http://", "https://")):
        raise ValueError(f"-s {url}: procguard serves no HTTP; use unix:///path/to/socket, ipc://... or tcp://...")
    return url


def find(server: str | None, config: str | None, server_key: str | None, client_key: str | None) -> ClientSettings:
    """The endpoint and keys from -s, -c and the key options; raises OSError and ValueError (the config file)."""
    client_key = client_key or os.environ.get("PROCGUARD_CLIENT_KEY")
    if server:
        if config:  # -c and -s: the endpoint from -s, the keys from the config file
            found = client_settings_from_config(config)
            server_key = server_key or found.server_public_key_file
            client_key = client_key or found.client_secret_key_file
        return ClientSettings(resolve_endpoint(server_endpoint(server), os.getcwd()), server_key, client_key)
    env = os.environ.get("PROCGUARD_CONTROL")
    if env and not config:
        return ClientSettings(resolve_endpoint(env, os.getcwd()), server_key, client_key)
    config = config or os.environ.get("PROCGUARD_CONFIG")
    if config is None and os.path.exists(DEFAULT_CONFIG):
        config = DEFAULT_CONFIG
    if config is None:
        # Our own default, else the system daemon's (for a member of its control_group, not root).
        endpoint = default_endpoint()
        own, system = ipc_path(endpoint), ipc_path(ROOT_ENDPOINT)
        if own is not None and not os.path.exists(own) and system is not None and os.path.exists(system):
            endpoint = ROOT_ENDPOINT
        return ClientSettings(endpoint, server_key, client_key)
    found = client_settings_from_config(config)
    return ClientSettings(found.endpoint, server_key or found.server_public_key_file,
                          client_key or found.client_secret_key_file)
