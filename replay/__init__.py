"""kvtrace replay layer."""
