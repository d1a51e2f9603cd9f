"""The HTTP surface: routes, request validation and problem+json errors."""
