"""`trainfleet sandbox`: a real multi-node cluster on one Linux machine, and faults to break it."""
