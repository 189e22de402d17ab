"""kvtrace app layer."""
