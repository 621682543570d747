"""A tiny model trained the way the runbooks' scripts train: under torchrun or DeepSpeed's
launcher (rank from the environment, `--local_rank` accepted), with a DeepSpeed ZeRO
config when one is given (`--deepspeed CONFIG`), reading data from a mounted directory,
saving checkpoints, and reporting to W&B when its key is set.

It learns a fixed linear map, so the loss falls step after step on every run.
  --slow-start S: print a loading line every second for S seconds before joining (a slow
                  but healthy start);
  --stuck-rank R: rank R never joins the process group and prints nothing (a stuck start).
"""

import argparse
import hashlib
import os
import socket
import time

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", "0")))
parser.add_argument("--deepspeed", dest="ds_config", help="a DeepSpeed config: train through DeepSpeed's engine")
parser.add_argument("--deepspeed_config", dest="ds_config")
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--data", help="a file every rank reads first (a dataset on shared storage)")
parser.add_argument("--save-dir", help="rank 0 saves a checkpoint here at the end")
parser.add_argument("--kernels", help="a shared library built on every node (fused kernels): loaded and called")
parser.add_argument("--slow-start", type=float, default=0)
parser.add_argument("--step-time", type=float, default=0, help="seconds each step takes at least (a bigger model)")
parser.add_argument("--stuck-rank", type=int)
args = parser.parse_args()
rank = int(os.environ["RANK"])
node = os.environ.get("TRAINFLEET_NODE") or socket.gethostname()


def stuck_forever() -> None:
    while True:
        time.sleep(3600)


if args.stuck_rank == rank:
    stuck_forever()
started = time.monotonic()
while time.monotonic() - started < args.slow_start:
    print(f"rank {rank} loading weights ({time.monotonic() - started:.0f}s)", flush=True)
    time.sleep(1)
if args.kernels:
    import ctypes

    library = ctypes.CDLL(os.path.abspath(args.kernels))
    library.fused_scale.restype = ctypes.c_double
    library.fused_scale.argtypes = [ctypes.c_double, ctypes.c_double]
    print(f"rank {rank} fused kernels from {args.kernels}: {library.fused_scale(1.5, 2.0)}", flush=True)
if args.data:
    with open(args.data, "rb") as data:
        print(f"rank {rank} read {len(data.read())} bytes of {args.data}", flush=True)
key = os.environ.get("WANDB_API_KEY")
if key:  # what wandb.login() would send; shown only as a digest
    print(f"rank {rank} wandb key sha256 {hashlib.sha256(key.encode()).hexdigest()[:12]}", flush=True)
if rank == 0:
    print(f"network: GLOO_SOCKET_IFNAME={os.environ.get('GLOO_SOCKET_IFNAME')} "
          f"NCCL_SOCKET_IFNAME={os.environ.get('NCCL_SOCKET_IFNAME')}", flush=True)

dist.init_process_group("gloo")
world = dist.get_world_size()
print(f"rank {rank} of {world} on {node} interface {os.environ.get('GLOO_SOCKET_IFNAME')} "
      f"nccl {os.environ.get('NCCL_SOCKET_IFNAME')}", flush=True)
torch.manual_seed(0)
target = torch.randn(8, 4)
model = torch.nn.Linear(8, 4, bias=False)
if args.ds_config:
    import deepspeed

    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)  # no DeepSpeed op to compile
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=args.ds_config)
    stage = engine.zero_optimization_stage()
    if rank == 0:
        print(f"deepspeed: ZeRO stage {stage}, world {engine.world_size}", flush=True)
else:
    engine = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
generator = torch.Generator().manual_seed(rank)
for step in range(1, args.steps + 1):
    x = torch.randn(64, 8, generator=generator)
    loss = (engine(x) - x @ target).pow(2).mean()
    if args.ds_config:
        engine.backward(loss)
        engine.step()
    else:
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    average = loss.detach().clone()
    dist.all_reduce(average)
    time.sleep(args.step_time)
    if rank == 0:
        print(f"step {step} loss {average.item() / world:.4f}", flush=True)
if args.save_dir and rank == 0:
    os.makedirs(args.save_dir, exist_ok=True)
    final = os.path.join(args.save_dir, f"step-{args.steps}.pt")
    torch.save(model.state_dict(), final + ".tmp")
    os.replace(final + ".tmp", final)
    print(f"saved {final}", flush=True)
dist.barrier()
dist.destroy_process_group()
