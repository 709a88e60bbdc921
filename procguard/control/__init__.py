"""The control socket: ZeroMQ server, authentication and command handlers."""
