"""Command-line interface: parses arguments and calls the typed Python API."""
