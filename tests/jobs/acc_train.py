"""An Accelerate job on the CPU; every rank prints what Accelerate made of its world.
--fail-rank R: rank R raises after the first step."""

import argparse

import torch
from accelerate import Accelerator

parser = argparse.ArgumentParser()
parser.add_argument("--fail-rank", type=int)
args = parser.parse_args()
acc = Accelerator()
model = torch.nn.Linear(16, 4); opt = torch.optim.SGD(model.parameters(), lr=0.1)
model, opt = acc.prepare(model, opt)
for step in range(3):
    loss = model(torch.randn(8, 16)).pow(2).mean()
    acc.backward(loss)
    opt.step()
    opt.zero_grad()
    if step == 0 and args.fail_rank == acc.process_index:
        raise ValueError(f"deliberate failure in rank {args.fail_rank}")
print(f"rank {acc.process_index} of {acc.num_processes} local {acc.local_process_index} device {acc.device} distributed {acc.distributed_type} loss {loss.item():.4f}", flush=True)
