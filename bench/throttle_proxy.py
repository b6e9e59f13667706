"""A TCP proxy on loopback that limits the bytes sent towards the server to RATE bytes/s in
total (all connections share the budget), as a slow link to an S3 store does.

    python3 bench/throttle_proxy.py TARGET_HOST:TARGET_PORT RATE   -> prints the listen port
Runs until killed. Only for bench/s3-slow.sh.
"""
import socket
import sys
import threading
import time

host, port = sys.argv[1].rsplit(":", 1)
rate = float(sys.argv[2])
lock = threading.Lock()
next_free = [time.monotonic()]


def wait_budget(n):
    # Each chunk reserves its slot on one shared timeline: total throughput stays at `rate`.
    with lock:
        now = time.monotonic()
        start = max(now, next_free[0])
        end = start + n / rate
        next_free[0] = end
    time.sleep(max(0.0, end - now))


def pipe(src, dst, throttled):
    try:
        while True:
            data = src.recv(16384)
            if not data:
                break
            if throttled:
                wait_budget(len(data))
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
while True:
    client, _ = listener.accept()
    server = socket.create_connection((host, int(port)))
    threading.Thread(target=pipe, args=(client, server, True), daemon=True).start()
    threading.Thread(target=pipe, args=(server, client, False), daemon=True).start()
