"""Run one command as two torch.distributed (gloo) ranks on this machine, or as one
process outside any group.

Shared by the tests of the multi-process paths: DDP training, sharded feature
extraction, tracking under torchrun, and the subprocesses that tests kill and resume.
Not a test module itself.
"""

import os
import socket
import subprocess


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_process_env():
    """This environment without torchrun's variables, one OpenMP thread, unbuffered output:
    for a subprocess that must run as a single process, whatever launched the tests."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def run_two_ranks(command, *, cwd=None, timeout=180):
    """Start ``command`` (an argv list) as ranks 0 and 1 of a 2-process group (the
    environment torchrun would set, one OpenMP thread each), wait for both and assert
    that both exit 0, showing a failing rank's output. Returns the two outputs."""
    port = str(free_port())
    processes = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank),
                   WORLD_SIZE="2", LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
        processes.append(subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for rank, (p, out) in enumerate(zip(processes, outputs, strict=True)):
        assert p.returncode == 0, f"rank {rank} exited with {p.returncode}:\n{out}"
    return outputs
