"""trainfleet: training jobs (torchrun, DeepSpeed, Accelerate, mpirun, a head-node runner)
on every node of a fleet of rented machines, over SSH; the map of the package is in
docs/architecture.md."""

__version__ = "0.1.0"
