#!/usr/bin/env bash
# GPU checks on real machines: what to run when a GPU fleet is at hand (none is where the
# tests run, so this is how the parsers and doctor's GPU findings meet real hardware).
#
# Usage: bash bench/gpu_check.sh [-f FLEET] [-n NODE]     (default: ./fleet.yaml, node 0)
# Output: one `gpu_check: KEY: VALUE` line per result (a fixed format: keep it when adding
# checks), then the raw material under trainfleet-runs/gpu-check-TIME/ to attach to a report.
set -euo pipefail
fleet=fleet.yaml
node=""
while getopts "f:n:" option; do
    case "$option" in
        f) fleet=$OPTARG ;;
        n) node=$OPTARG ;;
        *) echo "usage: bash bench/gpu_check.sh [-f FLEET] [-n NODE]" >&2; exit 2 ;;
    esac
done
out="trainfleet-runs/gpu-check-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
say() { printf 'gpu_check: %s: %s\n' "$1" "$2"; }
node=${node:-$(trainfleet check -f "$fleet" | head -1 | cut -d: -f1)}
say node "$node"

# 1. doctor, and how long it takes with its GPU health checks (nvidia-smi -q -x, the kernel log).
start=$(date +%s%N)
trainfleet doctor -f "$fleet" --json > "$out/doctor.json" || true
say doctor_seconds "$(awk -v ns=$(( $(date +%s%N) - start )) 'BEGIN {printf "%.2f", ns / 1e9}')"
python3 - "$out/doctor.json" <<'PY'
import json, sys
for f in json.load(open(sys.argv[1]))["findings"]:
    if f["check"] in ("gpus", "gpu health"):
        print("gpu_check: doctor: %s %s %s" % (f["verdict"], ",".join(f["nodes"]), f["summary"]))
PY

# 2. The parser against this driver's own output: what nvidia-smi says, and what trainfleet read of it.
trainfleet exec -f "$fleet" -n "$node" -- nvidia-smi -q -x | sed "s/^$node: //" > "$out/nvidia-smi-q-x.xml"
trainfleet exec -f "$fleet" -n "$node" -- 'dmesg 2>/dev/null || journalctl -k -b --no-pager -q' \
    | sed "s/^$node: //" | grep -i 'NVRM' > "$out/kernel-nvrm.log" || true
trainfleet exec -f "$fleet" -n "$node" -- nvidia-smi nvlink -s | sed "s/^$node: //" > "$out/nvlink-s.txt" || true
trainfleet exec -f "$fleet" -n "$node" -- 'for p in /sys/class/infiniband/*/ports/*; do echo "$p $(cat $p/state) $(cat $p/phys_state) $(cat $p/rate)"; done' \
    | sed "s/^$node: //" > "$out/ib-ports.txt" || true
python3 - "$out/nvidia-smi-q-x.xml" "$out/kernel-nvrm.log" "$out/nvlink-s.txt" <<'PY'
import dataclasses, sys
from trainfleet.agent.gpu_health import parse_nvlinks, parse_smi_xml, parse_xids
text = open(sys.argv[1]).read()
text = text[text.index("<?xml"):] if "<?xml" in text else text
for gpu in parse_smi_xml(text):
    print("gpu_check: parsed: %s" % dataclasses.asdict(gpu))
for event in parse_xids(open(sys.argv[2]).read()):
    print("gpu_check: xid: %s" % dataclasses.asdict(event))
for uuid, (links, down) in parse_nvlinks(open(sys.argv[3]).read()).items():
    print("gpu_check: nvlink: %s links %d down %s" % (uuid, links, down))
PY
sed 's/^/gpu_check: rdma on the node: /' "$out/ib-ports.txt"

# 3. One node, every GPU: an NCCL all-reduce through `trainfleet run`.
project="$out/nccl"
mkdir -p "$project"
cat > "$project/allreduce.py" <<'PY'
import os, time, torch, torch.distributed as dist
dist.init_process_group("nccl")
rank, world = dist.get_rank(), dist.get_world_size()
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
data = torch.ones(64 * 2**20 // 4, device="cuda")
for _ in range(5):
    dist.all_reduce(data)
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(20):
    dist.all_reduce(data)
torch.cuda.synchronize()
seconds = (time.perf_counter() - start) / 20
if rank == 0:
    print("busbw_gbps %.1f world %d" % (data.numel() * 4 * 2 * (world - 1) / world / seconds / 1e9, world))
dist.destroy_process_group()
PY
gpus=$(trainfleet exec -f "$fleet" -n "$node" -- nvidia-smi -L | grep -c 'GPU ' || true)
say gpus "$gpus"
trainfleet run -f "$fleet" -n "$node" --nproc-per-node "$gpus" --sync-dir "$project" allreduce.py \
    > "$out/nccl.log" 2>&1 && say nccl_allreduce "$(grep -o 'busbw_gbps [0-9.]* world [0-9]*' "$out/nccl.log")" \
    || say nccl_allreduce "failed: $(tail -1 "$out/nccl.log")"

# 4. Not built yet (issue 27): doctor --deep (burn, copy bandwidth, NCCL across nodes), the straggler check.
say deep "not built yet"
say straggler "not built yet"
say raw "$out"
