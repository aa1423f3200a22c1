"""The BPF C sources BCC compiles at start, shipped as package data (read via importlib.resources)."""
