"""The thread runner's in-process slot queue: immediate hand-over, priority order, capacity respected."""

import threading
import time

from flows.tasks import LocalSlots


def test_a_freed_slot_goes_to_the_highest_priority_waiter_and_capacity_holds():
    slots = LocalSlots(2)
    order, inside, peak = [], [0], [0]
    lock = threading.Lock()
    release = threading.Event()

    def stage(name, priority, n=1, wait=None):
        with slots.hold(n, priority):
            with lock:
                order.append(name)
                inside[0] += n
                peak[0] = max(peak[0], inside[0])
            if wait is not None:
                wait.wait(10)
            with lock:
                inside[0] -= n

    holders = [threading.Thread(target=stage, args=(f"hold{i}", 5, 1, release)) for i in range(2)]
    for t in holders:
        t.start()
    while slots.free:  # both slots taken
        time.sleep(0.01)
    waiters = [threading.Thread(target=stage, args=(name, p)) for name, p in
               (("sample", 3), ("evaluate", 9), ("train", 0), ("classifier", 1))]
    for t in waiters:
        t.start()
        time.sleep(0.05)  # arrival order: sample, evaluate, train, classifier
    assert order == ["hold0", "hold1"] or order == ["hold1", "hold0"]
    release.set()
    for t in holders + waiters:
        t.join(10)
    assert order[2:] == ["train", "classifier", "sample", "evaluate"]
    assert peak[0] <= 2 and slots.free == 2


def test_a_stage_wanting_more_than_is_free_waits_without_being_overtaken():
    slots = LocalSlots(2)
    got = []
    events = {k: threading.Event() for k in ("held", "free_small", "free_big", "free_late")}

    def stage(name, n, priority, release):
        with slots.hold(n, priority):
            got.append(name)
            events["held"].set()
            events[release].wait(10)

    small = threading.Thread(target=stage, args=("small", 1, 0, "free_small"), daemon=True)
    small.start()
    assert events["held"].wait(5)
    big = threading.Thread(target=stage, args=("big", 2, 0, "free_big"), daemon=True)
    big.start()
    time.sleep(0.1)
    late = threading.Thread(target=stage, args=("late", 1, 5, "free_late"), daemon=True)
    late.start()
    time.sleep(0.2)
    assert got == ["small"]  # one slot is free, but the two-slot stage is first in line
    events["free_small"].set()
    small.join(5)
    time.sleep(0.2)
    assert got == ["small", "big"]  # it took both slots; `late` waits for one
    events["free_big"].set()
    big.join(5)
    time.sleep(0.2)
    events["free_late"].set()
    late.join(5)
    assert got == ["small", "big", "late"] and slots.free == 2
