"""HF Trainer on a tiny GPT-2 built from its config (nothing downloaded), on random
tokens: what `trainfleet run` shows of a Trainer job (tests/captures/hf_trainer.txt)."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments


class Tokens(torch.utils.data.Dataset):
    def __init__(self, count: int = 512, length: int = 32) -> None:
        generator = torch.Generator().manual_seed(0)
        self.data = torch.randint(0, 256, (count, length), generator=generator)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.data[index], "labels": self.data[index]}


model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=2, n_head=2))
args = TrainingArguments(output_dir="/tmp/hf-out", max_steps=30, logging_steps=5, per_device_train_batch_size=8,
                         learning_rate=5e-4, report_to=[], use_cpu=True, ddp_backend="gloo", save_strategy="no",
                         disable_tqdm=True)
Trainer(model=model, args=args, train_dataset=Tokens()).train()
