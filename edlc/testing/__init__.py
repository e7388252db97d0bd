"""Test helpers: a code-built model zoo (no downloads) and random inputs for it."""
