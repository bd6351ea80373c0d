"""The tutorial's flow on the embedded SQLite default, end to end.

Starts `conveyor -A task worker --loglevel=info --pool=eventlet` (as the
tutorial does), submits tasks as its producer does, shows their states and
results, stops the worker with SIGTERM (a warm shutdown) and exits 0.
Run it with ./scripts/demo.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    os.chdir(HERE)
    for leftover in glob.glob("conveyor.db*"):  # the store, its WAL and its events
        os.remove(leftover)
    command = [sys.executable, "-m", "conveyor.cli", "-A", "task", "worker", "--loglevel=info", "--pool=eventlet"]
    print("$ conveyor -A task worker --loglevel=info --pool=eventlet", flush=True)
    worker = subprocess.Popen(command, start_new_session=True)
    try:
        sys.path.insert(0, HERE)
        from task import add, priority_high, priority_low

        time.sleep(1.0)
        print("\n>>> result = add.delay(1, 2)", flush=True)
        result = add.delay(1, 2)
        high = priority_high.delay("urgent")
        low = priority_low.apply_async(args=["whenever"], countdown=1)
        print(f"    id={result.id} state={result.state}")
        time.sleep(1.5)
        print(f"    a moment later: add={result.state} priority_high={high.state} priority_low={low.state}")
        print(">>> print(result.get())", flush=True)
        value = result.get(timeout=60)
        print(f"    {value}")
        for handle in (high, low):
            print(f"    {handle.name}: {handle.get(timeout=60)!r} ({handle.state})")
        board = result.scoreboard
        steps = " -> ".join(f"{h['state']}@{h['worker']}" for h in board["history"])
        print(f">>> result.scoreboard: {steps}, runtime {board['runtime']:.2f}s")
        print(f">>> ready={result.ready()} successful={result.successful()} failed={result.failed()}")
        ok = value == 3 and high.get() == "priority_high" and low.get() == "priority_low"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    print(f"\nworker stopped with exit code {worker.returncode}")
    return 0 if ok and worker.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
