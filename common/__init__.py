"""What every soundbus process shares, in layers; each imports only the layers above it.

    errors      UserError: the one error a user sees (one sentence, exit code 2)
    wire/       protocol v2: typed messages (msgspec Structs with their bounds), topics, the
                one-part codec; v1 kept only to read old recordings. No sockets, no I/O.
    observe/    counters (the log line and Prometheus) and rate-limited logs.
    transport/  ZeroMQ: socket options and addresses, Inbox (receive + validate + batch),
                Outbox (XPUB), link repair and CURVE advice, CURVE keys, the proxy.
    runtime/    the one stage loop (Runtime: context, input, output, signals, health, close
                order) that runs a stage's socket-free logic; per-stream bookkeeping
                (SeqCursor, StreamTable).
    recording/  the recording file format, record/replay/info/export.
    cli/        the ``soundbus`` command, shared flags, child processes, proxy/keys/health.

``common`` imports none of the stage packages (capture, convert, classify, ...): they
register their subcommands through the ``soundbus.commands`` entry-point group. ``soundbus up``
(the whole box) is the top-level package ``box``, which sits above them all.
"""
