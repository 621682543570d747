"""A small character-level transformer trained with DDP; see README.md beside it."""

from __future__ import annotations

import argparse
import ctypes
import gc
import io
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=HERE / "input.txt")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per rank per step")
    parser.add_argument("--block", type=int, default=64, help="context length in characters")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embd", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--checkpoint-dir", type=Path, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--resume", action="store_true",
                        help="continue from checkpoint-dir/ckpt.pt when it exists (as an elastic restart needs)")
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args()


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, block: int, embd: int, heads: int, layers: int) -> None:
        super().__init__()
        self.token = nn.Embedding(vocab, embd)
        self.position = nn.Embedding(block, embd)
        layer = nn.TransformerEncoderLayer(embd, heads, dim_feedforward=4 * embd, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embd)
        self.head = nn.Linear(embd, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(block), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        length = idx.shape[1]
        x = self.token(idx) + self.position(torch.arange(length, device=idx.device))
        x = self.blocks(x, mask=self.mask[:length, :length], is_causal=True)
        return self.head(self.norm(x))


def batch(data: torch.Tensor, size: int, block: int, generator: torch.Generator,
          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(len(data) - block - 1, (size,), generator=generator)
    x = torch.stack([data[s:s + block] for s in starts])
    y = torch.stack([data[s + 1:s + block + 1] for s in starts])
    return x.to(device), y.to(device)


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Write then rename: a crash mid-write never leaves a truncated checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)


def broadcast_checkpoint(state: dict | None, rank: int, device: torch.device) -> dict:
    """Rank 0's checkpoint to every rank, as bytes in a tensor (broadcast_object_list
    would need numpy, which torch does not require)."""
    if rank == 0:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8).to(device)
        size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    else:
        size = torch.zeros(1, dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    if rank != 0:
        data = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(data, src=0)
    host = data.cpu().contiguous()
    return torch.load(io.BytesIO(ctypes.string_at(host.data_ptr(), host.numel())), map_location="cpu")


@record
def main() -> None:
    args = parse_args()
    use_cuda = torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    text = args.data.read_text()
    vocab = sorted(set(text))
    lookup = {ch: i for i, ch in enumerate(vocab)}
    data = torch.tensor([lookup[ch] for ch in text], dtype=torch.long)

    torch.manual_seed(args.seed)
    model = CharTransformer(len(vocab), args.block, args.embd, args.heads, args.layers).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    checkpoint = args.checkpoint_dir / "ckpt.pt" if args.checkpoint_dir else None

    start_step = 0
    if args.resume:
        # Only rank 0 needs the file: the checkpoint travels to the other ranks by
        # broadcast, so no shared disk is needed.
        if checkpoint is None:
            raise SystemExit("--resume needs --checkpoint-dir")
        found = torch.tensor([int(rank == 0 and checkpoint.is_file())], device=device)
        dist.broadcast(found, src=0)
        if found.item():
            state = torch.load(checkpoint, map_location="cpu") if rank == 0 else None
            loaded = broadcast_checkpoint(state, rank, device)
            model.load_state_dict(loaded["model"])
            optimizer.load_state_dict(loaded["optimizer"])
            start_step = loaded["step"]
            if rank == 0:
                print(f"resumed from {checkpoint} at step {start_step} on {world} rank(s)", flush=True)
        elif rank == 0:
            print(f"no checkpoint at {checkpoint} yet: starting from step 0", flush=True)

    ddp = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
    generator = torch.Generator().manual_seed(args.seed * 1000 + rank + 7919 * start_step)
    if rank == 0:
        params = sum(p.numel() for p in model.parameters())
        print(f"training {params} parameters on {world} rank(s), backend {dist.get_backend()}, "
              f"vocab {len(vocab)}, steps {start_step}->{args.steps}", flush=True)

    tokens_per_step = args.batch_size * args.block * world
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start_step + 1, args.steps + 1):
        x, y = batch(data, args.batch_size, args.block, generator, device)
        logits = ddp(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window_steps += 1
        if step % args.log_every == 0 or step == args.steps:
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            mean_loss /= world
            elapsed = time.perf_counter() - window_start
            if rank == 0:
                rate = tokens_per_step * window_steps / elapsed
                print(f"step {step} loss {mean_loss.item():.4f} tokens/s {rate:.0f}", flush=True)
                if not math.isfinite(mean_loss.item()):
                    raise FloatingPointError(f"loss is {mean_loss.item()} at step {step}")
            window_start, window_steps = time.perf_counter(), 0
        if checkpoint is not None and (step % args.checkpoint_every == 0 or step == args.steps) and rank == 0:
            save_checkpoint(checkpoint, model, optimizer, step)
    if rank == 0 and checkpoint is not None:
        print(f"checkpoint {checkpoint} at step {args.steps}", flush=True)
    # DDP's reducer holds the process group: while it lives, destroy_process_group()
    # cannot free the group, which is then torn down at interpreter exit with its
    # threads running, and the rank aborts ("terminate called without an active exception").
    del ddp
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
