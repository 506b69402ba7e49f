"""unifer_cuda.graph_split's cutting of one captured graph into a graph per capture, on a model of the driver's
graph calls, and the graph runner's fallbacks. The real calls need a GPU: conformance's e2e/graphs_match_eager
replays the cut graphs against eager steps."""

from __future__ import annotations

import re

import pytest
from unifer_cuda import graph_split
from unifer_cuda.graph_split import DriverError

MARKER = 0x7000


class FakeDriver:
    """Graphs as ordered node lists; a node is (name, marker value or None). Node handles are ints."""

    def __init__(self, listed: list[tuple[str, int | None]]) -> None:
        self.node_info = {}
        self.graphs = {1: []}
        for name, value in listed:
            handle = len(self.node_info) + 100
            self.node_info[handle] = (name, value)
            self.graphs[1].append(handle)
        self.clone_of = {}  # (clone graph, original node) -> cloned node
        self.destroyed = []
        self.calls = {"find_in_clone": 0, "destroy_node": 0}
        self.undeletable = None  # a node name whose destruction the driver ignores (a refused destroy)

    def nodes(self, graph):
        return list(self.graphs[graph])

    def marker_value(self, node, marker_ptr):
        assert marker_ptr == MARKER
        return self.node_info[node][1]

    def clone(self, graph):
        clone = max(self.graphs) + 1
        self.graphs[clone] = []
        for node in self.graphs[graph]:
            copy = len(self.node_info) + 100
            self.node_info[copy] = self.node_info[node]
            self.clone_of[clone, node] = copy
            self.graphs[clone].append(copy)
        return clone

    def find_in_clone(self, node, clone):
        self.calls["find_in_clone"] += 1
        copy = self.clone_of[clone, node]
        assert any(copy in nodes for nodes in self.graphs.values()), "a destroyed node was looked up"
        return copy

    def destroy_node(self, node):
        self.calls["destroy_node"] += 1
        if self.node_info[node][0] != self.undeletable:
            next(nodes for nodes in self.graphs.values() if node in nodes).remove(node)

    def __call__(self, name, handle):
        self.destroyed.append((name, handle))

    def names(self, graph):
        return [self.node_info[n][0] for n in self.graphs[graph]]


def chain(*segments):
    listed = []
    for i, names in enumerate(segments):
        listed.append((f"marker{i + 1}", i + 1))
        listed += [(name, None) for name in names]
    return listed


def test_each_cut_graph_holds_one_capture():
    driver = FakeDriver(chain(["norm", "gemm", "attention"], ["norm"], ["gemm", "memset", "gemm"]))
    cut = graph_split.split(driver, 1, MARKER, 3)
    assert [driver.names(g) for g in cut] == [["norm", "gemm", "attention"], ["norm"], ["gemm", "memset", "gemm"]]
    assert driver.names(1)[0] == "marker1" and len(driver.graphs[1]) == 10  # the captured graph is left whole


@pytest.mark.parametrize("listed, problem", [
    ([("marker2", 2), ("a", None), ("marker1", 1), ("b", None)], "marker 2 listed where marker 1"),
    ([("a", None), ("marker1", 1), ("b", None), ("marker2", 2), ("c", None)], "nodes before its first marker"),
    (chain(["a"], [], ["c"]), "3 segments (1 empty) for 3 captures"),
    (chain(["a"], ["b"]), "2 segments (0 empty) for 3 captures"),
])
def test_a_graph_out_of_capture_order_is_refused(listed, problem):
    with pytest.raises(DriverError, match=re.escape(problem)):
        graph_split.split(FakeDriver(listed), 1, MARKER, 3)


def test_each_node_is_handled_about_log2_count_times():
    segments = [[f"n{i}.{j}" for j in range(40)] for i in range(35)]  # 35 buckets, as the engine's defaults
    driver = FakeDriver(chain(*segments))
    cut = graph_split.split(driver, 1, MARKER, 35)
    assert [driver.names(g) for g in cut] == segments
    nodes = 35 * 41  # with the markers
    # Cutting each bucket from its own clone of the whole looks up and destroys 34 others' nodes per bucket.
    assert driver.calls["find_in_clone"] <= 7 * nodes and driver.calls["destroy_node"] <= 7 * nodes


def test_a_wrong_cut_frees_what_it_made():
    driver = FakeDriver(chain(["a", "b"], ["c"], ["d"]))
    driver.undeletable = "c"  # so the first capture's graph keeps it
    with pytest.raises(DriverError, match="kept 3 nodes, not 2"):
        graph_split.split(driver, 1, MARKER, 3)
    assert sorted(driver.destroyed) == [("cuGraphDestroy", 2), ("cuGraphDestroy", 3)]
    assert len(driver.graphs[1]) == 7  # the captured graph is left whole


def test_destroy_is_best_effort():
    calls = []

    def driver(name, handle):
        calls.append((name, handle))
        raise DriverError("CUDA_ERROR_DEINITIALIZED")

    graph_split.destroy(driver, [7, 8], [9])
    assert calls == [("cuGraphExecDestroy", 7), ("cuGraphExecDestroy", 8), ("cuGraphDestroy", 9)]


@pytest.fixture
def one_by_one(monkeypatch):
    """CUDAGraphRunner with ``capture`` recording its steps in place of capturing them."""
    from unifer_cuda.graphs import CUDAGraphRunner

    captured = []
    monkeypatch.setattr(CUDAGraphRunner, "capture", lambda self, fn: captured.append(fn) or (lambda: fn()))
    return CUDAGraphRunner(), captured


def test_one_capture_per_graph_when_turned_off(one_by_one, monkeypatch):
    runner, captured = one_by_one
    monkeypatch.setenv("UNIFER_CUDA_ONE_CAPTURE", "0")
    monkeypatch.setattr(graph_split, "Driver", lambda: pytest.fail("the driver was used"))
    fns = [lambda i=i: i for i in range(3)]
    assert [replay() for replay in runner.capture_many(fns)] == [0, 1, 2] and captured == fns


def test_one_capture_is_tried_by_default_and_an_unusable_driver_means_one_capture_each(one_by_one, monkeypatch):
    runner, captured = one_by_one
    monkeypatch.delenv("UNIFER_CUDA_ONE_CAPTURE", raising=False)
    tried = []

    def no_driver():
        tried.append(True)
        raise DriverError("CUDA driver library unusable: libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(graph_split, "Driver", no_driver)
    fns = [lambda i=i: i for i in range(3)]
    assert [replay() for replay in runner.capture_many(fns)] == [0, 1, 2] and captured == fns
    assert tried == [True]
