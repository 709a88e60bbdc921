"""Descriptors a child talks through: output pipes, held sockets, notify sockets."""
