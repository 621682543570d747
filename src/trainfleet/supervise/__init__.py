"""Carrying out a LaunchPlan: streams, root cause, teardown. Knows no launcher."""
