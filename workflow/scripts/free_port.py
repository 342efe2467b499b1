"""Print a free TCP port on this machine, so jobs that start at the same time get distinct rendezvous ports.

    accelerate launch --main_process_port $(python workflow/scripts/free_port.py) ...
"""

import socket


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    print(free_port())
