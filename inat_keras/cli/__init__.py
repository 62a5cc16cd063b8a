"""Command-line front ends: each command parses its flags into config dataclasses and calls the library."""
