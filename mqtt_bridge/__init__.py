"""``soundbus mqtt``: results and events to an MQTT broker, with Home Assistant discovery.

    names       the MQTT topic layout, label keys, Home Assistant ids (pure functions)
    discovery   Home Assistant discovery payloads for the bridge, streams, labels, levels
    core        BridgeCore: results, stored events and what the broker says -> publications;
                no sockets, no broker, explicit clocks (unit tests drive it with Structs)
    outgoing    Outgoing: what waits for the broker: latest state per topic, a bounded
                event queue (overflow counted)
    broker      BrokerLink: the paho-mqtt client in its own network thread; hands
                notifications over through a bounded queue, takes publications without blocking
    stage       MqttLogic: the stage logic on the shared runtime that ties the three together
    cli         flags, secrets (file or environment, never argv), TLS, ``run``

The pipeline never waits on the broker: while it is away, states coalesce to the latest
value per topic and events queue to a bound; on reconnect the bridge republishes its
availability, discovery configs and current states.
"""
