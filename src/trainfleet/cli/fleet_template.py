"""Text that `trainfleet init` writes."""

FLEET_TEMPLATE = """\
# trainfleet fleet file: every machine once, with how to reach it.
# Then: `trainfleet check`, `trainfleet ssh setup` (pins each node's host key), `trainfleet doctor`.

# Where jobs run on every node (created if missing; `trainfleet sync` copies code here).
workdir: ~/trainfleet

# The Python on the nodes that has torch installed (a venv or conda path works too).
python: python3

# closed: `run` first closes the job's ports to everyone but these nodes (needs root or
# passwordless sudo on the nodes; `trainfleet firewall revoke` undoes it). SSH stays open.
# firewall: closed

# Environment for every rank on every node (not for secrets).
env: {}
#   NCCL_DEBUG: WARN

# SSH defaults; each node below may override user, port, identity_file and jump.
ssh:
  user: ubuntu
  port: 22
  # The private key your provider installed on the machines; left out: ssh-agent, then ~/.ssh/id_*.
  # identity_file: ~/.ssh/provider-key.pem
  # Host keys are always verified against this file; unknown or changed keys are refused.
  known_hosts: ~/.ssh/known_hosts
  connect_timeout: 10
  # jump: user@bastion.example.com:22

nodes:
  # host: what SSH connects to (address or name). slots: processes (GPUs) to start there.
  # address: the address peers use for training traffic, when it differs from host
  #          (e.g. a private network); interface: its NIC name (detected when left out).
  - host: 203.0.113.10
    name: node0
    slots: 8
    # address: 10.0.0.10
    # interface: ens5
  - host: 203.0.113.11
    name: node1
    slots: 8
    # port: 2222
  # A spare waits outside the job and takes a lost node's place (with --max-restarts):
  # - host: 203.0.113.12
  #   name: node2
  #   slots: 8
  #   spare: true
"""
