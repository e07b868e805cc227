"""Announcing the server over mDNS (python-zeroconf) so Home Assistant discovers it.

Home Assistant's Wyoming integration browses ``_wyoming._tcp.local.`` and offers every
service it finds (its ``zeroconf`` manifest entry); the service's address and port are all
it needs, it then asks the server ``describe``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket

log = logging.getLogger("wyoming")

SERVICE_TYPE = "_wyoming._tcp.local."
MDNS_GROUP = "224.0.0.251"


def default_name() -> str:
    """``soundbus-<host>``: mDNS instance names are free text, but keep it plain."""
    host = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-")[:40] or "host"
    return f"soundbus-{host}"


def advertised_address(host: str) -> str:
    """The IPv4 address to announce for a server bound to ``host``: itself if specific, else
    the address this machine would use to reach the mDNS group (what wyoming's own helper does)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and not ip.is_unspecified:
        return str(ip)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((MDNS_GROUP, 1))  # no packet is sent: this only picks the outgoing interface
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


class Announcement:
    """One registered ``_wyoming._tcp`` service; ``close()`` withdraws it."""

    def __init__(self, name: str, port: int, address: str) -> None:
        self.name, self.port, self.address = name, port, address
        self._zc = None
        self._info = None

    async def register(self) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        self._info = AsyncServiceInfo(SERVICE_TYPE, f"{self.name}.{SERVICE_TYPE}", port=self.port,
                                      parsed_addresses=[self.address], properties={})
        self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        # python-zeroconf returns a task: awaiting the call schedules it, awaiting the task finishes it
        await (await self._zc.async_register_service(self._info))
        log.info("announced %s on %s:%d over mDNS (%s)", self.name, self.address, self.port, SERVICE_TYPE)

    async def close(self) -> None:
        if self._zc is None:
            return
        try:
            await (await self._zc.async_unregister_service(self._info))  # the goodbye packets go out
        finally:
            await self._zc.async_close()
            self._zc = None
