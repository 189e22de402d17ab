"""kvtrace simulator layer."""
