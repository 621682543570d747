"""trainfleet: run torchrun jobs across rented GPU machines over SSH."""

__version__ = "0.1.0"
