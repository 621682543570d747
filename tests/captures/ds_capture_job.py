"""DeepSpeed (ZeRO-2 over gloo on the CPU) with the engine's own step log on, and the
loss printed as DeepSpeedExamples' CIFAR script prints it (`[epoch, batch] loss: x`):
what `trainfleet run --launcher deepspeed` shows (tests/captures/deepspeed.txt)."""

import argparse

import deepspeed
import torch

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int, default=-1)
args = parser.parse_args()
config = {"train_micro_batch_size_per_gpu": 8, "steps_per_print": 5, "wall_clock_breakdown": False,
          "optimizer": {"type": "Adam", "params": {"lr": 0.001}}, "zero_optimization": {"stage": 2}}
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
torch.manual_seed(0)
running = 0.0
for i in range(20):
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    loss = torch.nn.functional.cross_entropy(engine(x), y)
    engine.backward(loss)
    engine.step()
    running += loss.item()
    if i % 5 == 4:
        print(f"[{1 : d}, {i + 1 : 5d}] loss: {running / 5 : .3f}", flush=True)
        running = 0.0
