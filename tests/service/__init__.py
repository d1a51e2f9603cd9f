"""The service as a whole: settings, logs, public API, processes, limits, hostile clients."""
