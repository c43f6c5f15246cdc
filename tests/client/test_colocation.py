"""Client processes that share the machine's cores get a short OpenMP spin-wait, unless told otherwise."""

from __future__ import annotations

from splitfed.colocation import SPIN_COUNT, colocated_environment, spin_wait_hint


def test_a_colocated_client_spins_briefly_and_keeps_the_rest_of_the_environment():
    environment = colocated_environment({"PATH": "/bin", "OMP_NUM_THREADS": "2"})
    assert environment == {"PATH": "/bin", "OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": str(SPIN_COUNT)}


def test_an_explicit_spin_count_or_wait_policy_is_kept():
    assert colocated_environment({"GOMP_SPINCOUNT": "0"})["GOMP_SPINCOUNT"] == "0"
    environment = colocated_environment({"OMP_WAIT_POLICY": "ACTIVE"})
    assert environment == {"OMP_WAIT_POLICY": "ACTIVE"}  # a chosen policy sets its own spin


def test_the_base_is_not_modified(monkeypatch):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    base = {"HOME": "/home/x"}
    colocated_environment(base)
    assert base == {"HOME": "/home/x"}
    assert colocated_environment()["GOMP_SPINCOUNT"] == str(SPIN_COUNT)  # defaults to os.environ


def test_a_client_of_a_server_on_this_machine_is_told_how_to_stop_spinning_on_its_cores():
    for server in ("127.0.0.1:7000", "localhost:7000", "[::1]:7000"):
        hint = spin_wait_hint(server, {})
        assert hint is not None and f"GOMP_SPINCOUNT={SPIN_COUNT}" in hint and server in hint


def test_no_hint_for_a_remote_server_or_a_spin_already_chosen():
    assert spin_wait_hint("10.0.0.5:7000", {}) is None
    assert spin_wait_hint("trunk.example.org:443", {}) is None
    assert spin_wait_hint("127.0.0.1:7000", {"GOMP_SPINCOUNT": "300000"}) is None
    assert spin_wait_hint("127.0.0.1:7000", {"OMP_WAIT_POLICY": "PASSIVE"}) is None
