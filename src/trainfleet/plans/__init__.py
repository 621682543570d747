"""Pure planners: what to do on the nodes, computed from the fleet and the facts gathered
from them, with no I/O, so that `--dry-run` prints it and tests compare it to golden files.
`network`: the training address and interface of each node; `firewall`: the rules that
open what training needs; `mounts`: each storage's mount commands; `containers`: a launch
plan run inside the fleet's container. (The launch plan itself is `job/plan.py`, made by
`launchers/`; doctor's checks are `doctor/`.)"""
