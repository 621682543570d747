"""The same job for schedulers trainfleet does not run: Slurm and Kubernetes."""
