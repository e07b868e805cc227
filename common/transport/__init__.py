"""ZeroMQ: sockets and addresses, Inbox (receive, validate, batch), Outbox (XPUB), links, CURVE, proxy."""
