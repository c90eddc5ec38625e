"""Fails the way real scripts do: a traceback on stderr and a non-zero exit."""

import edge_training as et

data_url, train_url, hp = et.parse_args()
print(f"starting with lr={hp['lr']}", flush=True)
raise ValueError(f"learning rate {hp['lr']} is out of range")
