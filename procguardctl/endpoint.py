"""Which daemon procguardctl talks to, and with which CURVE keys.

-s ENDPOINT, else $PROCGUARD_CONTROL, else the config file (-c, $PROCGUARD_CONFIG, DEFAULT_CONFIG if
present), else the default endpoint for this uid (docs/protocol.md).
"""

import os

from procguard.protocol import (ROOT_ENDPOINT, ClientSettings, client_settings_from_config, default_endpoint, ipc_path,
                                resolve_endpoint)

__all__ = ["DEFAULT_CONFIG", "ClientSettings", "client_settings_from_config", "find", "server_endpoint"]

DEFAULT_CONFIG = "/etc/procguard/procguard.toml"


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
