"""The bus: the MQTT client, the Mosquitto runtime, its TLS/ACL configuration and CLI.
The wire format itself is in `wire`."""
