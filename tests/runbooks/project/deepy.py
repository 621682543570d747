"""Like GPT-NeoX's deepy.py: `python deepy.py TRAIN_SCRIPT CONFIG...` merges the configs,
reads the hostfile they name (GPT-NeoX's default: /job/hostfile) and hands DeepSpeed's
own runner the command line, in this process, as deepy.py does. With several hosts in
the hostfile that runner starts the other nodes over pdsh."""

import json
import os
import sys

from deepspeed.launcher.runner import main as deepspeed_runner

script, *config_files = sys.argv[1:]
config = {"hostfile": "/job/hostfile", "master_port": 29500}
for path in config_files:
    with open(path) as handle:
        config.update(json.load(handle))
hosts = []
if os.path.exists(config["hostfile"]):
    with open(config["hostfile"]) as handle:
        hosts = [line.split()[0] for line in handle if line.strip() and not line.startswith("#")]
print(f"deepy: {len(hosts)} host(s) in {config['hostfile']}: {' '.join(hosts)}", flush=True)
train_args = [script, "--deepspeed_config", config["deepspeed_config"], "--steps", str(config["train_iters"])]
for name, flag in (("save", "--save-dir"), ("kernels", "--kernels")):
    if config.get(name):
        train_args += [flag, config[name]]
# (No --master_addr: the runner asks the first host for its address, as deepy.py lets it.)
deepspeed_runner(["--hostfile", config["hostfile"], "--master_port", str(config["master_port"])] + train_args)
