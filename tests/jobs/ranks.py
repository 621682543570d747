"""A test job: every rank joins the process group, then behaves as the arguments say.

--fail-rank R: rank R raises after the first all-reduce; the others keep all-reducing.
--forever: every rank all-reduces until it is killed (for cancellation tests).
--print-env NAME: each rank prints NAME's value and its own argv.
"""

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record


@record
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-rank", type=int)
    parser.add_argument("--forever", action="store_true")
    parser.add_argument("--seconds", type=float, default=0)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    value = torch.ones(1)
    dist.all_reduce(value)
    print(f"rank {rank} of {world} on {os.environ['TRAINFLEET_NODE']} pid {os.getpid()} sum {int(value.item())}",
          flush=True)
    if args.fail_rank == rank:
        print(f"rank {rank} about to fail", flush=True)
        raise RuntimeError(f"deliberate failure in rank {rank}")
    deadline = time.monotonic() + args.seconds
    while args.forever or args.fail_rank is not None or time.monotonic() < deadline:
        dist.all_reduce(value)
        time.sleep(0.05)
    dist.destroy_process_group()
    sys.exit(0)


if __name__ == "__main__":
    main()
