"""`dbsync console`: the web console of a receiver (server-rendered pages, JSON under /api, /metrics)."""
