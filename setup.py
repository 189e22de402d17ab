"""Build of the one C extension (ingest/_otlpfast.c: the OTLP protobuf and JSON lines decoders);
everything else is in pyproject.toml. `optional=True`: without a C compiler the install still
succeeds and ingest takes the validating decoder (ingest/decode.py) for everything (same
results, slower)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kvtrace.ingest._otlpfast",
            ["ingest/_otlpfast.c"],
            optional=True,
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        )
    ]
)
