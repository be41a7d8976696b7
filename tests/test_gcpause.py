"""gcpause: the collector is off inside paused blocks (nested, in several threads) and back on after."""

import gc
import threading

import pytest

from deeplog_siem import gcpause


def test_paused_blocks_nest_and_restore_the_collector():
    assert gc.isenabled()
    with gcpause.paused():
        assert not gc.isenabled()
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer block is still running
    assert gc.isenabled()


def test_an_error_inside_a_block_still_restores_the_collector():
    with pytest.raises(RuntimeError), gcpause.paused():
        raise RuntimeError("run failed")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    try:
        with gcpause.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_overlapping_blocks_in_threads_reenable_only_after_the_last():
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with gcpause.paused():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    inside.wait(10)
    with gcpause.paused():
        pass
    assert not gc.isenabled()  # the other thread's block has not ended
    release.set()
    t.join(10)
    assert gc.isenabled()


def test_collect_reclaims_cycles_made_while_paused():
    class Node:
        pass

    with gcpause.paused():
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert gcpause.collect() >= 2


def test_collect_promotes_survivors_so_the_next_one_does_not_walk_them_again():
    class Node:
        pass

    with gcpause.paused():
        old = [Node() for _ in range(100)]
        gcpause.collect()
        oldest = {id(o) for o in gc.get_objects(generation=2)}
        assert all(id(o) in oldest for o in old)  # survivors are out of the young generations
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert gcpause.collect() >= 2  # a cycle made after a collection is still found
