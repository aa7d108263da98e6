"""Device profiles: the YAML format, topic routing, the decoder and golden vectors."""
