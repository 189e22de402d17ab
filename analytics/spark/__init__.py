"""The analyses on Apache Spark over a Parquet trace lake (docs/spark.md): transpile.py turns the
registry's DuckDB SQL into Spark SQL at run time, partition.py splits the race analyses into
overlapping time windows, runner.py runs them; ingest/spark_ingest.py writes the lake from OTLP.

Only this package (and the Spark ingest) imports pyspark and sqlglot: the `spark` extra."""
