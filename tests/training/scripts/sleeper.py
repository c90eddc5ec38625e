"""Starts a helper process, records both pids, prints a line per tick and sleeps (for cancel,
timeout and live log tests)."""

import os
import subprocess
import sys
import time

import edge_training as et

data_url, train_url, hp = et.parse_args()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.path.join(train_url, "pids.txt"), "w") as f:
    f.write(f"{os.getpid()} {child.pid}\n")
for i in range(int(hp.get("ticks", 600))):
    print(f"tick {i}", flush=True)
    et.log_scalar(train_url, "tick", float(i), step=i)
    time.sleep(float(hp.get("interval", 0.2)))
print("done", flush=True)
