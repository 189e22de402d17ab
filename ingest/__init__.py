"""kvtrace ingest layer."""
