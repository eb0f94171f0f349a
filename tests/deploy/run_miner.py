"""Run the real ``avminer mine`` CLI in this process, then keep its /metrics endpoint up until SIGTERM.

    python -m tests.deploy.run_miner DONE_FILE -- [avminer arguments...]

In Kafka mode a miner runs until stopped, so Prometheus always scrapes its final counters; in embedded
mode ``avminer mine`` exits when the drive log ends. Staying up afterwards (the endpoint is a daemon
thread of this process) lets the test's Prometheus scrape the end state of the replay. The exit code
of the CLI goes to DONE_FILE.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from avminer.cli.main import main as avminer_main


def main() -> None:
    done = Path(sys.argv[1])
    argv = sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:]
    rc = avminer_main(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    done.with_suffix(".tmp").write_text(str(rc))
    done.with_suffix(".tmp").rename(done)
    stop.wait()


if __name__ == "__main__":
    main()
