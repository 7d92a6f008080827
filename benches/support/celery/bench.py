"""Celery 5 with a Redis broker, measured the way benches/jobs.rs measures
claro: no-op tasks, three worker processes, on this machine.

    python3 bench.py APPENDFSYNC JOBS CLIENTS PORT [BATCH BATCH_CLIENTS]

APPENDFSYNC: `no` (Redis' default persistence: none per write) or `always`
(every write fsynced: the durable comparison with claro, whose every state
change is committed to a majority and fsynced). Prints one line per figure.
BATCH, BATCH_CLIENTS: the batched figure, JOBS tasks sent as `group`s of
BATCH tasks from BATCH_CLIENTS producer threads (claro's `submit --many`
beside it). Every loop is bounded in count and time.
"""

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

APPENDFSYNC, JOBS, CLIENTS, PORT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
BATCH = int(sys.argv[5]) if len(sys.argv) > 5 else 0
BATCH_CLIENTS = int(sys.argv[6]) if len(sys.argv) > 6 else 0
LATENCY_COUNT = 300
TIME_MAX_S = 180
WORKERS = 3

TASKS = """
from celery import Celery
app = Celery('noop', broker='redis://127.0.0.1:{port}/0', backend='redis://127.0.0.1:{port}/1')
app.conf.worker_prefetch_multiplier = 1
app.conf.task_acks_late = True

@app.task
def noop():
    return 1
"""


def start_redis(folder):
    args = ["redis-server", "--port", str(PORT), "--bind", "127.0.0.1", "--dir", folder,
            "--save", "", "--appendonly", "yes" if APPENDFSYNC == "always" else "no",
            "--appendfsync", "always" if APPENDFSYNC == "always" else "everysec"]
    redis = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        if subprocess.run(["redis-cli", "-p", str(PORT), "ping"], capture_output=True).stdout.strip() == b"PONG":
            return redis
        time.sleep(0.05)
    raise SystemExit("redis did not start")


def main():
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "noop.py"), "w") as f:
        f.write(TASKS.format(port=PORT))
    sys.path.insert(0, folder)
    redis = start_redis(folder)
    workers = [subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "noop", "worker", "--concurrency", "1", "--pool", "solo",
         "-n", f"w{i}@%h", "--loglevel", "WARNING"],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(WORKERS)]
    try:
        import noop
        noop.noop.delay().get(timeout=60)  # the workers are up
        lat = []
        for _ in range(LATENCY_COUNT):
            t = time.perf_counter()
            noop.noop.delay().get(timeout=10)
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        print(f"celery ({APPENDFSYNC}): single no-op task, submit to result: p50 {lat[len(lat) // 2]:.2f} ms, "
              f"p99 {lat[int(len(lat) * 0.99)]:.2f} ms")
        results = []
        lock = threading.Lock()
        deadline = time.time() + TIME_MAX_S

        def produce(n):
            mine = []
            for _ in range(n):
                if time.time() > deadline:
                    break
                mine.append(noop.noop.delay())
            with lock:
                results.extend(mine)

        started = time.perf_counter()
        threads = [threading.Thread(target=produce, args=(JOBS // CLIENTS,)) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in results:
            r.get(timeout=max(1, deadline - time.time()))
        took = time.perf_counter() - started
        print(f"celery ({APPENDFSYNC}): throughput {len(results) / took:.0f} tasks/s "
              f"({len(results)} no-op tasks from {CLIENTS} producer threads, {WORKERS} worker processes)")
        if BATCH and BATCH_CLIENTS:
            batched(noop, deadline + TIME_MAX_S)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.kill()
        redis.terminate()
        redis.wait()


def batched(noop, deadline):
    """JOBS tasks as groups of BATCH from BATCH_CLIENTS threads, to the last result."""
    from celery import group
    groups = []
    lock = threading.Lock()

    def produce(n):
        mine = []
        for _ in range(n):
            if time.time() > deadline:
                break
            mine.append(group(noop.noop.s() for _ in range(BATCH)).apply_async())
        with lock:
            groups.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=produce, args=(JOBS // BATCH // BATCH_CLIENTS,))
               for _ in range(BATCH_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Each task's result as the throughput figure waits for them (a
    # group's own `get` loses its result subscription under this load).
    for g in groups:
        for r in g.results:
            r.get(timeout=max(1, deadline - time.time()))
    took = time.perf_counter() - started
    count = len(groups) * BATCH
    print(f"celery ({APPENDFSYNC}): batched {count / took:.0f} tasks/s "
          f"({count} no-op tasks in groups of {BATCH} from {BATCH_CLIENTS} producer threads)")


main()
