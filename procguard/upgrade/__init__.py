"""Live re-exec of the daemon (issue #19): save the state, keep the descriptors, exec, adopt (docs/upgrade.md)."""
