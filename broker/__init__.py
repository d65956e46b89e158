"""The bus: wire format, topics, MQTT client and broker runtime."""
