"""Wait for every process of a job in Python before an engine's native startup waits for them.

TensorFlow's multi-worker startup and ``jax.distributed`` wait for the other
processes in native code: TensorFlow holds the GIL there and has taken SIGTERM
for its preemption notices, so neither a signal nor a Python timeout can end the
wait (a worker whose peer never started ignored SIGTERM for 13 minutes and
more); JAX aborts the process with a stack trace when its own timeout runs out.
`wait_for_peers` makes that wait here first, where signals raise and the
timeout ends it with one line (`PeerTimeoutError`). Once every process has
arrived, the engine's own startup returns at once.

The protocol, on the TCP port that the leader's engine service takes right
after (the JAX coordinator, TensorFlow's first chief or worker): the leader
listens there; every other process connects, retrying until the deadline, and
sends its rank; when all ranks are in, the leader answers each with ``go``; the
others close first, so the port is free for the engine at once.
"""

import socket
import time

from siamese_k3.errors import PeerTimeoutError

RETRY_SECONDS = 0.2



def wait_for_peers(leader, rank, processes, timeout_seconds, hint=""):
    """Return when all `processes` processes (ranks 0..processes-1) have called this; rank 0 is the leader.

    Args:
        leader: ``"host:port"`` of rank 0, whose port is free until its engine starts.
        rank: this process's rank.
        processes: how many processes take part.
        timeout_seconds: how long to wait for them.
        hint: what to tell the user when they do not all come (how they were launched).

    Raises:
        PeerTimeoutError: when they have not all arrived in time.
    """
    if processes <= 1:
        return
    host, port = _split(leader)
    deadline = time.monotonic() + timeout_seconds
    if rank == 0:
        try:
            missing = _lead(port, processes, deadline)
        except OSError as error:
            if error.errno is None:
                raise
            raise OSError(error.errno, f"data-parallel process 0 cannot listen on {leader}: {error.strerror}") from None
        if missing:
            raise PeerTimeoutError(
                f"data-parallel process 0 of {processes} waited {timeout_seconds:g} s on {leader} for "
                f"process{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing))}, which never "
                f"connected.{' ' + hint if hint else ''}"
            )
    elif not _follow(host, port, rank, deadline):
        raise PeerTimeoutError(
            f"data-parallel process {rank} of {processes} waited {timeout_seconds:g} s for process 0 on "
            f"{leader} and the other processes, which did not all arrive.{' ' + hint if hint else ''}"
        )


def _split(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "localhost", int(port)


def _lead(port, processes, deadline):
    """Accept every other rank on `port`, then answer them all; the ranks still missing at the deadline."""
    if socket.has_dualstack_ipv6():
        server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
    else:
        server = socket.create_server(("", port))
    arrived = {}
    try:
        with server:
            server.settimeout(RETRY_SECONDS)
            while len(arrived) < processes - 1:
                if time.monotonic() > deadline:
                    return sorted(set(range(1, processes)) - set(arrived))
                try:
                    connection, _ = server.accept()
                except socket.timeout:
                    continue
                rank = _read_line(connection, deadline)
                if rank is None or not rank.isdigit() or not 0 < int(rank) < processes:
                    connection.close()  # a stray connection (a port scanner, a late engine client)
                    continue
                previous = arrived.pop(int(rank), None)
                if previous is not None:  # the same rank again (it retried): keep the newest connection
                    previous.close()
                arrived[int(rank)] = connection
            for connection in arrived.values():
                connection.sendall(b"go\n")
            for connection in arrived.values():  # they close first: no TIME_WAIT left on this port
                _read_line(connection, time.monotonic() + 5)
        return []
    finally:
        for connection in arrived.values():
            connection.close()


def _follow(host, port, rank, deadline):
    """Connect to the leader, send `rank`, wait for its ``go``; False at the deadline."""
    while time.monotonic() < deadline:
        try:
            connection = socket.create_connection((host, port), timeout=RETRY_SECONDS * 5)
        except OSError:
            time.sleep(RETRY_SECONDS)
            continue
        with connection:
            try:
                connection.sendall(f"{rank}\n".encode())
                answer = _read_line(connection, deadline)
            except OSError:
                answer = None
        if answer == "go":
            return True
        if answer is None and time.monotonic() < deadline:
            time.sleep(RETRY_SECONDS)  # the leader restarted, or it was another program: try again
    return False


def _read_line(connection, deadline):
    """One line from `connection` (without its newline), or None at end of stream or the deadline."""
    received = b""
    while not received.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        connection.settimeout(min(remaining, RETRY_SECONDS * 5))
        try:
            chunk = connection.recv(64)
        except socket.timeout:
            continue
        except OSError:
            return None
        if not chunk:
            return None
        received += chunk
    return received.decode(errors="replace").strip()
