"""Linux I/O shared by the tracer and the adopter: /proc, sock_diag, a process's own sockets."""

from __future__ import annotations
