"""A test server: listen on HOST PORT (IPv4, IPv6 or '::' dual stack), accept and hold connections."""

from __future__ import annotations

import socket
import sys
import threading


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
    s.bind((host, port))
    s.listen(512)
    print("listening", flush=True)
    held = []

    def drain(c):
        try:
            while c.recv(4096):
                pass
        except OSError:
            pass
        c.close()

    while True:
        c, _ = s.accept()
        held.append(c)
        threading.Thread(target=drain, args=(c,), daemon=True).start()


if __name__ == "__main__":
    main()
