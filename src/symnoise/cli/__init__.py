"""Command-line entry points: one short module per command. The library never imports this package."""
