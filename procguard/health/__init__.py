"""Health checks: one module per check type."""
