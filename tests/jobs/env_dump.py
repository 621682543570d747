"""A test job that prints its whole environment as one JSON line (the supervisor redacts secrets)."""

import json
import os

print("ENV " + json.dumps(dict(os.environ), sort_keys=True), flush=True)
