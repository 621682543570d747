"""A test job: every rank joins the process group, then behaves as the arguments say.

--fail-rank R: rank R raises after the first all-reduce; the others keep all-reducing.
--kill-rank R: rank R is killed by SIGKILL after the first all-reduce.
--block-rank R: rank R sleeps forever (outside any collective) while the others all-reduce.
--forever: every rank all-reduces until it is killed (for cancellation tests).
--print-env NAME: each rank prints NAME's value and its working directory.
--tick: rank 0 prints "tick N" about once a second while the ranks all-reduce.
--after S: fail, kill or block S seconds in (while all-reducing), not after the first all-reduce.
--fill-rank R: rank R writes a checkpoint in its working directory, a megabyte a step, until it fails.
--after-full N: ... and then, instead of failing, says so and prints N lines (and trains on).
"""

import argparse
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record


def block_forever() -> None:
    while True:
        time.sleep(3600)


@record
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-rank", type=int)
    parser.add_argument("--kill-rank", type=int)
    parser.add_argument("--block-rank", type=int)
    parser.add_argument("--print-env")
    parser.add_argument("--forever", action="store_true")
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument("--tick", action="store_true")
    parser.add_argument("--after", type=float, default=0.0)
    parser.add_argument("--fill-rank", type=int)
    parser.add_argument("--after-full", type=int)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    value = torch.ones(1)
    dist.all_reduce(value)
    print(f"rank {rank} of {world} on {os.environ['TRAINFLEET_NODE']} pid {os.getpid()} sum {int(value.item())}",
          flush=True)
    if args.print_env:
        print(f"rank {rank} env {args.print_env}={os.environ.get(args.print_env)} cwd {os.getcwd()}", flush=True)

    def act() -> None:
        if args.kill_rank == rank:
            os.kill(os.getpid(), signal.SIGKILL)
        if args.block_rank == rank:
            print(f"rank {rank} blocks", flush=True)
            block_forever()
        if args.fail_rank == rank:
            print(f"rank {rank} about to fail", flush=True)
            raise RuntimeError(f"deliberate failure in rank {rank}")

    began = time.monotonic()
    if not args.after:
        act()
    deadline = time.monotonic() + args.seconds
    blocked = args.fail_rank is not None or args.kill_rank is not None or args.block_rank is not None or \
        (args.fill_rank is not None and args.after_full is None)
    count, next_tick = 0, time.monotonic() + 1
    acted = not args.after
    going = torch.ones(1)
    while True:
        if not acted and time.monotonic() - began >= args.after:
            acted = True
            act()
        # Every rank stops at the same step: a rank whose own clock ran out one step earlier
        # would leave the others in an all-reduce it never joins.
        going.fill_(1.0 if args.forever or blocked or time.monotonic() < deadline else 0.0)
        dist.all_reduce(going, op=dist.ReduceOp.MIN)
        if not going.item():
            break
        time.sleep(0.05)
        if args.fill_rank == rank:
            try:
                with open("checkpoint.bin", "ab") as checkpoint:
                    checkpoint.write(os.urandom(1 << 20))
            except OSError as exc:
                if args.after_full is None:
                    raise
                print(f"rank {rank} disk full: {exc}", flush=True)
                for line in range(args.after_full):
                    print(f"rank {rank} line {line}", flush=True)
                args.fill_rank = None
        if args.tick and rank == 0 and time.monotonic() >= next_tick:
            count, next_tick = count + 1, next_tick + 1
            print(f"tick {count}", flush=True)
    dist.destroy_process_group()
    sys.exit(0)


if __name__ == "__main__":
    main()
