"""Ray's no-op task throughput: the baseline `sched-throughput` prints beside idunno's.

Usage: python3 ray_noop_throughput.py TASKS [NUM_CPUS]
Starts a local Ray with NUM_CPUS (default 2) CPUs, warms it up, then submits TASKS no-op tasks
and gathers them all, timed with perf_counter. Prints one JSON line:
{"tasks": N, "seconds": S, "ray": VERSION, "num_cpus": C}.
"""
import json
import sys
import time

import ray


def main():
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    cpus = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")

    @ray.remote
    def noop(x):
        return x

    # Warm-up: start the worker processes before timing.
    ray.get([noop.remote(i) for i in range(200)])
    started = time.perf_counter()
    refs = [noop.remote(i) for i in range(tasks)]
    ray.get(refs)
    seconds = time.perf_counter() - started
    ray.shutdown()
    print(json.dumps({"tasks": tasks, "seconds": seconds, "ray": ray.__version__, "num_cpus": cpus}))


if __name__ == "__main__":
    main()
