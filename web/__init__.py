"""The web view (``soundbus web``): one page that shows the bus live, served read-only.

    spectrum  log-mel columns and levels per stream, numpy and scipy (no torch)
    logic     the stage: tensors, results, stored events, heartbeats in; the board out (no sockets)
    views     per stream and per model: held samples, labels, counters, latency
    board     what every browser is shown, held once, bounded, shared by the two threads
    server    aiohttp on its own thread: the page, the WebSocket, the JSON API, clips
    requests  what a browser may send, checked (WebSocket messages, query strings)
    paced     the stage input taken in turns (few wake-ups at a thousand messages a second)
    history   the event store, read-only: history rows and clip files (path-checked)
    auth      loopback by default; a token (never in argv) for anything else
    cli       ``soundbus web``
    static/   the page: index.html, app.js, style.css (no build step, no CDN)

``web`` imports ``common`` and ``events`` (its schema only); nothing imports ``web`` (docs/web.md).
"""
