"""`trainfleet doctor`: the checks (pure) over what ops.doctor gathers."""
