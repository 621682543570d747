"""A test job that handles a secret carelessly: prints it, and checks it is not in argv."""

import os
import sys
import time

import torch.distributed as dist

dist.init_process_group("gloo")
token = os.environ["TF_TEST_TOKEN"]
if any(token in arg for arg in sys.argv):
    raise SystemExit("the secret reached argv")
print(f"rank {dist.get_rank()} secret is {token} (argv clean)", flush=True)
print("holding", flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 3)
dist.barrier()
dist.destroy_process_group()
