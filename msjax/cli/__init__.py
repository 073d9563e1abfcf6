"""Command-line entry points behind the thin scripts in bin/."""
