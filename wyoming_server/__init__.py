"""``soundbus wyoming``: Home Assistant's Wyoming wake-word protocol in front of the bus.

Every Wyoming connection becomes one stream on the bus, so one ``classify --model wakeword``
worker (here or on other machines) scores every satellite in shared batches.

Map of the package (named ``wyoming_server``: ``wyoming`` is the protocol library it uses):
- ``reader``    one Wyoming event off a connection, every length bounded
- ``names``     the wake words ``info`` lists, and which of them a ``detect{names}`` wants
- ``session``   one connection's detection, socket-free: events in, raw messages and replies out
- ``bus``       the asyncio ZeroMQ side: raw messages out, results in
- ``server``    the connection handler and what all connections share
- ``announce``  the optional mDNS (zeroconf) announcement for Home Assistant's discovery
- ``cli``       ``soundbus wyoming`` flags and its one asyncio loop

It imports ``common`` (and capture's framer and arrival clock); ``common`` never imports it.
"""
