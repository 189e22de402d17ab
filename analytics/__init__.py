"""kvtrace analytics layer."""
