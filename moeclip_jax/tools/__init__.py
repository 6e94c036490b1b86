"""Small command-line tools (offline fixtures for the README and demo)."""
