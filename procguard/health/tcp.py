"""The tcp check: the service accepts a connection."""

from procguard.config.model import HealthCheckConfig
from procguard.health.connect import close, connect


async def check_tcp(hc: HealthCheckConfig) -> None:
    _, writer = await connect(hc.address or "")
    await close(writer)
