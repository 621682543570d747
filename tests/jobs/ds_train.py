"""A DeepSpeed job: ZeRO-2 (the config's) over gloo on the CPU; every rank prints what
DeepSpeed's launcher gave it. --fail-rank R: rank R raises after the first step.
--checkpoint PATH: rank 0 saves the weights and the step there after every step (on a
file system every node sees), and every rank resumes from it, as a script that survives
a lost node does; --sleep S slows each step."""

import argparse
import os
import time

import deepspeed
import torch

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int, default=-1)
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--fail-rank", type=int)
parser.add_argument("--checkpoint")
parser.add_argument("--sleep", type=float, default=0.0)
parser = deepspeed.add_config_arguments(parser)
args = parser.parse_args()
deepspeed.init_distributed(dist_backend="gloo")
model = torch.nn.Linear(16, 4)
first = 0
if args.checkpoint and os.path.exists(args.checkpoint):
    saved = torch.load(args.checkpoint)
    model.load_state_dict(saved["model"])
    first = saved["step"] + 1
    if os.environ["RANK"] == "0":
        print(f"resumed at step {first} on {os.environ['WORLD_SIZE']} ranks", flush=True)
engine, opt, _, _ = deepspeed.initialize(args=args, model=model, model_parameters=model.parameters())
for step in range(first, args.steps):
    x = torch.randn(8, 16)
    loss = engine(x).pow(2).mean()
    engine.backward(loss)
    engine.step()
    if step == 0 and args.fail_rank == int(os.environ["RANK"]):
        raise ValueError(f"deliberate failure in rank {args.fail_rank}")
    if args.checkpoint and os.environ["RANK"] == "0":
        torch.save({"model": engine.module.state_dict(), "step": step}, args.checkpoint + ".new")
        os.replace(args.checkpoint + ".new", args.checkpoint)
        print(f"step {step} world {os.environ['WORLD_SIZE']}", flush=True)
    time.sleep(args.sleep)
r = int(os.environ["RANK"])
print(f"rank {r} local_rank_arg {args.local_rank} env " + " ".join(f"{k}={os.environ.get(k)}" for k in ["RANK","LOCAL_RANK","WORLD_SIZE","LOCAL_SIZE","CROSS_RANK","CROSS_SIZE","MASTER_ADDR","MASTER_PORT"]) + f" loss {loss.item():.4f}", flush=True)
