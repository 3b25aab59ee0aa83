"""Thin command-line layer: parse options, build stages, read and write NDJSON."""
