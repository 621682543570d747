"""The SSH algorithms trainfleet offers: modern, and each one this asyncssh can do."""

from __future__ import annotations


def test_the_ssh_algorithms_offered_are_each_known_to_asyncssh_and_none_is_left_empty() -> None:
    from trainfleet.transport.ssh import ALGORITHMS, algorithms

    offered = algorithms()
    assert set(offered) == set(ALGORITHMS) and all(offered.values()), offered
    assert "curve25519-sha256" in offered["kex_algs"] and offered["kex_algs"] == [
        name for name in ALGORITHMS["kex_algs"] if name in offered["kex_algs"]]  # post-quantum first, if at all
    assert not any("sha1" in name or "cbc" in name for names in offered.values() for name in names)
