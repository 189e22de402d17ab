"""Build of the C extensions (ingest/_otlpfast.c: the OTLP protobuf and JSON lines decoders;
ingest/_kvfast.c: kv_events rows from kv span attributes); everything else is in pyproject.toml.
`optional=True`: without a C compiler the install still succeeds and ingest takes the validating
decoder (ingest/decode.py) and ingest/sql/derive_kv_events.sql for everything (same results,
slower)."""

from setuptools import Extension, setup

FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]

setup(
    ext_modules=[
        Extension("kvtrace.ingest._otlpfast", ["ingest/_otlpfast.c"], depends=["ingest/_cbuf.h"], optional=True,
                  extra_compile_args=FLAGS),
        Extension("kvtrace.ingest._kvfast", ["ingest/_kvfast.c"], depends=["ingest/_cbuf.h"], optional=True,
                  extra_compile_args=FLAGS),
    ]
)
