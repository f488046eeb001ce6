"""The extension loads in the real host from custom_nodes/, through its V3 entrypoint."""
import logging
import os

from host_env import REPO

OUR_NODE_IDS = {"MaskAttnLoadDemoModel"}
# Core nodes + comfy_extras of the pinned host (a125cd84) without API nodes; fewer
# means a host module failed to import (e.g. the `utils` shadowing trap).
CORE_NODE_COUNT = 382


def our_records(records):
    return [r for r in records if "maskattn" in r.getMessage().lower()]


def test_host_registers_our_nodes_from_custom_nodes(host_nodes):
    nodes, records = host_nodes
    assert OUR_NODE_IDS <= set(nodes.NODE_CLASS_MAPPINGS)
    ours = [d for d in nodes.LOADED_MODULE_DIRS.values() if os.path.realpath(d) == str(REPO)]
    assert ours, f"the host did not load {REPO} from custom_nodes/: {nodes.LOADED_MODULE_DIRS}"
    for node_id in OUR_NODE_IDS:
        assert nodes.NODE_CLASS_MAPPINGS[node_id].__module__.endswith("nodes_demo")


def test_host_logged_no_import_failure(host_nodes):
    _, records = host_nodes
    failures = [r.getMessage() for r in records
                if r.levelno >= logging.WARNING and ("Cannot import" in r.getMessage() or "IMPORT FAILED" in r.getMessage())]
    assert not failures, failures
    assert not [r for r in our_records(records) if r.levelno >= logging.WARNING]


def test_core_nodes_all_imported(host_nodes):
    nodes, _ = host_nodes
    core = [k for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k not in OUR_NODE_IDS and
            not getattr(v, "RELATIVE_PYTHON_MODULE", "").startswith("custom_nodes.")]
    assert len(core) >= CORE_NODE_COUNT, len(core)
