"""How the controller reaches the nodes: SSH connections, the agent client, one session per command."""
