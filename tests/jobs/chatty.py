"""A test job that prints as training scripts do, without torch: every rank prints
`step N loss X` about three times a second until it is stopped; with --burst N, rank 0
prints N such lines at once and the job ends."""

import argparse
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--burst", type=int, default=0)
args = parser.parse_args()
rank = int(os.environ["RANK"])
if args.burst:
    if rank == 0:
        for step in range(args.burst):
            print(f"step {step} loss {4.0 / (1 + step / 1000):.4f} tokens/s {1000 + step % 97}")
else:
    step = 0
    while True:
        print(f"step {step} loss {3.0 / (1 + step / 10) + rank / 100:.4f}", flush=True)
        step += 1
        time.sleep(0.3)
