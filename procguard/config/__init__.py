"""Parse and describe configuration: frozen dataclasses, keys, programs and sections."""
