"""The job: what to run, independent of the launcher that starts it."""

from trainfleet.job.spec import JobSpec, new_job_id, validate_job

__all__ = ["JobSpec", "new_job_id", "validate_job"]
