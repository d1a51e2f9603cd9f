"""Pieces of HTTP that serve any ASGI app: content-coding negotiation, the codings,
entity-tag and date validators, and the streaming CompressionMiddleware."""
