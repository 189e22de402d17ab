"""Domain exceptions of the analytics layer; only the CLI turns them into one line for a person."""

from __future__ import annotations


class AnalyticsError(Exception):
    """Base class: anything the analytics layer refuses or cannot do."""


class AnalysisDefinitionError(AnalyticsError):
    """An `analytics/sql/*.sql` file is malformed: bad header, unknown parameter, SQL that does not bind."""


class UnknownAnalysisError(AnalyticsError):
    """A name that is not in the registry."""


class StoreError(AnalyticsError):
    """The store is missing, not a kvtrace store, or refuses the query."""


class ReadOnlyQueryError(AnalyticsError):
    """An ad-hoc query tried to change the store or reach outside it."""


class LabelsError(AnalyticsError):
    """A ground-truth labels file is missing or malformed."""
