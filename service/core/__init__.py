"""Pieces of HTTP that serve any ASGI app: content-coding negotiation (compression next)."""
