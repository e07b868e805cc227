"""The event store (``soundbus events``): every onset/offset the models report, kept in SQLite
with a clip of its audio, queried from the command line and republished on the bus.

    logic    the stage: results and audio in, rows and clips out (no sockets)
    ring     the newest audio of each stream, by sample index
    writer   the thread that owns the database and the clip files
    clips    FLAC/Opus/WAV files written atomically (temporary name, then renamed)
    store    rows and clips together: recovery after a crash, retention, size
    schema   the SQLite schema, its versions and migrations
    query    filters, tables and JSON for list/show/stats
    cli      ``soundbus events run|list|show|export|stats|prune|info``

``events`` imports ``common``; ``common`` never imports it (docs/events.md).
"""
