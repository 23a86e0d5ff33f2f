"""All NATS wiring: subjects, messages, KV state and the handler runtime."""
