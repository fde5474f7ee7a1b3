"""The test services' port picker never hands out one port twice."""

from free_ports import free_ports


def test_free_ports_are_distinct_even_when_the_os_would_reuse_a_closed_probes_port():
    # Five hundred probes closed one by one repeated a port in 20 runs of 20 on this machine.
    ports = free_ports(500)
    assert len(set(ports)) == 500
    assert all(1024 < port < 65536 for port in ports)
