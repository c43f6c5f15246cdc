"""--mode auto picks from the server's capacity and explains itself."""

from __future__ import annotations

from splitfed.server.auto_mode import Capacity, choose_mode, estimate_batch_bytes, measure_capacity

GIB = 2**30


def test_one_client_is_sequential():
    choice = choose_mode(1, Capacity(64 * GIB, 16, 4), 10 * 2**20, GIB)
    assert choice.mode == "sequential" and "one client" in choice.reason


def test_several_accelerators_give_one_sub_server_each():
    choice = choose_mode(3, Capacity(64 * GIB, 16, 8), 10 * 2**20, GIB)
    assert (choice.mode, choice.sub_servers) == ("hierarchical", 3) and "accelerators" in choice.reason


def test_cpu_with_room_batches_clients_and_without_room_goes_one_at_a_time():
    roomy = choose_mode(4, Capacity(20 * GIB, 2, 0), 10 * 2**20, GIB)
    assert roomy.mode == "client-batch" and "fit" in roomy.reason
    tight = choose_mode(4, Capacity(6 * GIB, 2, 0), 10 * 2**20, GIB)
    assert tight.mode == "sequential" and "not fit" in tight.reason


def test_capacity_is_measured_and_estimates_scale():
    capacity = measure_capacity()
    assert capacity.cores >= 1 and capacity.free_bytes > 0 and capacity.accelerators >= 0
    assert estimate_batch_bytes(576, 26) == 2 * estimate_batch_bytes(576, 13)
