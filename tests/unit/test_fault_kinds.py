"""Which failures are the engine's (no start backoff) and which task errors mean a dead bridge copy."""

from swarmpool.functions.policy import FOUND_DEAD, engine_fault, failed_start
from swarmpool.swarm.model import ENGINE_FAULT
from swarmpool.swarm.names import bridge_name, instance_network_name
from swarmpool.swarm.networks import stale_network


def test_engine_faults_and_deaths_of_running_instances_do_not_count_as_failed_starts() -> None:
    assert failed_start("dead: container failed (exit 1)")
    assert failed_start("not ready within 60 s")
    assert not failed_start(f"service not created: {ENGINE_FAULT}: This node is not a swarm manager.")
    assert not failed_start(f"dead: container rejected {ENGINE_FAULT}: instance bridge kept dead")
    assert not failed_start(f"container failed {FOUND_DEAD}")
    assert engine_fault(f"{ENGINE_FAULT} while creating x") and not engine_fault(f"container failed {FOUND_DEAD}")


def test_a_dead_bridge_copy_is_recognised_by_the_engine_s_words() -> None:
    assert stale_network("network mnxx7qlzc72bkcy2jklwx0nna exists")
    assert stale_network("cannot create network eq6x (sprp.1): conflicts with network luhv (sprp.1): "
                         "networks have same bridge name")
    assert not stale_network("network mode host not supported") and not stale_network("")


def test_bridge_generations_fit_an_interface_name_and_the_filter_pattern_covers_them() -> None:
    assert len(bridge_name("a" * 11, "z")) <= 15
    assert bridge_name("ns") == "spns.+" and bridge_name("ns", "3").startswith(bridge_name("ns")[:-1])
    assert instance_network_name("ns") == "ns-instances" and instance_network_name("ns", "1") == "ns-instances-1"
