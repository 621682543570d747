"""`trainfleet bench net`, the job: all-reduce bandwidth by size, then a point-to-point matrix.

Runs on every rank under torchrun; rank 0 prints one `TFBENCH {json}` line per result.
busbw follows nccl-tests: busbw = algbw * 2(n-1)/n for all-reduce.
"""

import argparse
import json
import os
import time

import torch
import torch.distributed as dist


def emit(record):
    print("TFBENCH " + json.dumps(record), flush=True)


def all_reduce_sizes(device, sizes, min_iters, seconds_per_size):
    world = dist.get_world_size()
    for size in sizes:
        tensor = torch.ones(max(1, size // 4), dtype=torch.float32, device=device)
        dist.all_reduce(tensor)  # warm-up: connections, buffers
        if device.type == "cuda":
            torch.cuda.synchronize()
        iters, elapsed = 0, 0.0
        while iters < min_iters or (elapsed < seconds_per_size and iters < 1000):
            dist.barrier()
            started = time.perf_counter()
            dist.all_reduce(tensor)
            if device.type == "cuda":
                torch.cuda.synchronize()
            # The slowest rank decides how long a collective took.
            took = torch.tensor([time.perf_counter() - started], dtype=torch.float64, device=device)
            dist.all_reduce(took, op=dist.ReduceOp.MAX)
            elapsed += float(took.item())
            iters += 1
        seconds = elapsed / iters
        algbw = tensor.numel() * 4 / seconds
        if dist.get_rank() == 0:
            emit({"op": "allreduce", "bytes": tensor.numel() * 4, "seconds": seconds, "iters": iters,
                  "algbw": algbw, "busbw": algbw * 2 * (world - 1) / world, "world": world})


def p2p_matrix(device, size):
    """Every ordered pair of nodes, one at a time, between the nodes' local rank 0.

    Ranks describe themselves with a tensor (all_gather_object would need numpy)."""
    me = torch.tensor([dist.get_rank(), int(os.environ.get("TRAINFLEET_NODE_RANK", "0")),
                       int(int(os.environ.get("LOCAL_RANK", "0")) == 0)], dtype=torch.int64, device=device)
    everyone = [torch.zeros_like(me) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, me)
    leaders = [(int(t[0]), int(t[1])) for t in everyone if int(t[2])]
    rank = dist.get_rank()
    tensor = torch.ones(max(1, size // 4), dtype=torch.float32, device=device)
    for src_rank, src_node in leaders:
        for dst_rank, dst_node in leaders:
            if src_rank == dst_rank:
                continue
            dist.barrier()
            started = time.perf_counter()
            if rank == src_rank:
                dist.send(tensor, dst_rank)
                dist.recv(tensor[:1], dst_rank)  # the receiver's acknowledgement
            elif rank == dst_rank:
                dist.recv(tensor, src_rank)
                dist.send(tensor[:1], src_rank)
            took = time.perf_counter() - started
            report = torch.tensor([took if rank == src_rank else 0.0], dtype=torch.float64, device=device)
            dist.all_reduce(report, op=dist.ReduceOp.MAX)
            if rank == 0:
                emit({"op": "p2p", "src": src_node, "dst": dst_node, "bytes": tensor.numel() * 4,
                      "seconds": float(report.item()), "gbit_s": tensor.numel() * 32 / float(report.item()) / 1e9})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", required=True, help="comma-separated byte counts")
    parser.add_argument("--min-iters", type=int, default=3)
    parser.add_argument("--seconds-per-size", type=float, default=1.0)
    parser.add_argument("--p2p-bytes", type=int, default=0)
    args = parser.parse_args()
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if dist.get_rank() == 0:
        emit({"op": "setup", "backend": dist.get_backend(), "world": dist.get_world_size()})
    all_reduce_sizes(device, [int(s) for s in args.sizes.split(",")], args.min_iters, args.seconds_per_size)
    if args.p2p_bytes:
        p2p_matrix(device, args.p2p_bytes)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
