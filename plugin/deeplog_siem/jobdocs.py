"""jobdocs: which documents of the shared output indices belong to a job.

Contract: `job_query(job_name)` is a query DSL filter matching the documents whose `deeplog.job` is
`job_name`; for the default job (`config.DEFAULT_JOB`) also those without `deeplog.job`, written before jobs
had names, when there was only one job. A named job never matches those. What a job reads back from the
anomalies index (its feedback, the sessions its retraining leaves out) goes through this filter.
"""

from __future__ import annotations

from typing import Any

from .config import DEFAULT_JOB

JOB_FIELD = "deeplog.job"


def job_query(job_name: str) -> dict[str, Any]:
    """The filter for job `job_name`'s documents."""
    own: dict[str, Any] = {"term": {JOB_FIELD: job_name}}
    if job_name != DEFAULT_JOB:
        return own
    unnamed = {"bool": {"must_not": [{"exists": {"field": JOB_FIELD}}]}}
    return {"bool": {"should": [own, unnamed], "minimum_should_match": 1}}
