"""An Accelerate job on the CPU; every rank prints what Accelerate made of its world.
--fail-rank R: rank R raises after the first step. --checkpoint PATH, --steps N and
--sleep S as in ds_train.py: a job that resumes where it was after a lost node."""

import argparse
import os
import time

import torch
from accelerate import Accelerator

parser = argparse.ArgumentParser()
parser.add_argument("--fail-rank", type=int)
parser.add_argument("--checkpoint")
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--sleep", type=float, default=0.0)
args = parser.parse_args()
acc = Accelerator()
model = torch.nn.Linear(16, 4); opt = torch.optim.SGD(model.parameters(), lr=0.1)
first = 0
if args.checkpoint and os.path.exists(args.checkpoint):
    saved = torch.load(args.checkpoint)
    model.load_state_dict(saved["model"])
    first = saved["step"] + 1
    if acc.is_main_process:
        print(f"resumed at step {first} on {acc.num_processes} ranks", flush=True)
model, opt = acc.prepare(model, opt)
for step in range(first, args.steps):
    loss = model(torch.randn(8, 16)).pow(2).mean()
    acc.backward(loss)
    opt.step()
    opt.zero_grad()
    if step == 0 and args.fail_rank == acc.process_index:
        raise ValueError(f"deliberate failure in rank {args.fail_rank}")
    if args.checkpoint and acc.is_main_process:
        torch.save({"model": acc.unwrap_model(model).state_dict(), "step": step}, args.checkpoint + ".new")
        os.replace(args.checkpoint + ".new", args.checkpoint)
        print(f"step {step} world {acc.num_processes}", flush=True)
    time.sleep(args.sleep)
print(f"rank {acc.process_index} of {acc.num_processes} local {acc.local_process_index} device {acc.device} distributed {acc.distributed_type} loss {loss.item():.4f}", flush=True)
