"""The fault suite: the service as real processes, under load, while its servers fail."""
