"""One CUDA stream capture for many graphs: the driver-API half of ``CUDAGraphRunner.capture_many``.

Why: on an H100 (driver 580, torch 2.11), once a process has made a second stream capture, even of an empty graph,
every replay of every graph loses most of the overlap between its kernels and the cuBLAS ones around them, ~0.4 µs
at each of the ~145 such boundaries in a batch-1 decode step (~5% of the step; benchmarks/RESULTS.md). Instantiating
more graphs does not cost, so the runner captures every bucket's step in one stream capture, a marker memset before
each, and cuts that graph at the markers into a graph per bucket here: clones of it with the other buckets' nodes
destroyed, which keeps the edges (programmatic ones included) among the nodes they keep.

torch exposes the captured graph (``CUDAGraph(keep_graph=True).raw_cuda_graph()``) but not the calls to cut it, so
they go through ctypes to the driver library.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from itertools import chain

logger = logging.getLogger(__name__)

MEMSET_NODE = 2  # CU_GRAPH_NODE_TYPE_MEMSET
MARKER_BYTES = 64
MAX_MARKERS = 255  # a marker's value is a byte, 1 .. 255


class MemsetParams(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_uint64), ("pitch", ctypes.c_size_t), ("value", ctypes.c_uint),
                ("element_size", ctypes.c_uint), ("width", ctypes.c_size_t), ("height", ctypes.c_size_t)]


_P = ctypes.c_void_p
_SIGNATURES = {
    "cuMemsetD8Async": (ctypes.c_uint64, ctypes.c_ubyte, ctypes.c_size_t, _P),
    "cuGraphGetNodes": (_P, ctypes.POINTER(_P), ctypes.POINTER(ctypes.c_size_t)),
    "cuGraphNodeGetType": (_P, ctypes.POINTER(ctypes.c_int)),
    "cuGraphMemsetNodeGetParams": (_P, ctypes.POINTER(MemsetParams)),
    "cuGraphClone": (ctypes.POINTER(_P), _P),
    "cuGraphNodeFindInClone": (ctypes.POINTER(_P), _P, _P),
    "cuGraphDestroyNode": (_P,),
    "cuGraphDestroy": (_P,),
    "cuGraphInstantiateWithFlags": (ctypes.POINTER(_P), _P, ctypes.c_ulonglong),
    "cuGraphLaunch": (_P, _P),
    "cuGraphExecDestroy": (_P,),
}


class DriverError(RuntimeError):
    pass


class Driver:
    """The CUDA driver calls used here, typed; each raises DriverError on a result other than CUDA_SUCCESS."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
            for name, argtypes in _SIGNATURES.items():
                getattr(lib, name).argtypes = argtypes
        except (OSError, AttributeError) as exc:
            raise DriverError(f"CUDA driver library unusable: {exc}") from exc
        self._lib = lib

    def __call__(self, name: str, *args) -> None:
        result = getattr(self._lib, name)(*args)
        if result != 0:
            raise DriverError(f"{name} returned CUresult {result}")

    def nodes(self, graph) -> list[int]:
        count = ctypes.c_size_t(0)
        self("cuGraphGetNodes", graph, None, ctypes.byref(count))
        listed = (_P * count.value)()
        self("cuGraphGetNodes", graph, listed, ctypes.byref(count))
        return [listed[i] for i in range(count.value)]

    def marker_value(self, node: int, marker_ptr: int) -> int | None:
        """The byte a memset node writes to the marker buffer, or None for any other node."""
        kind = ctypes.c_int()
        self("cuGraphNodeGetType", node, ctypes.byref(kind))
        if kind.value != MEMSET_NODE:
            return None
        params = MemsetParams()
        self("cuGraphMemsetNodeGetParams", node, ctypes.byref(params))
        return params.value & 0xFF if params.dst == marker_ptr else None  # the byte, were it stored replicated

    def mark(self, marker_ptr: int, value: int, stream: int) -> None:
        self("cuMemsetD8Async", marker_ptr, value, MARKER_BYTES, stream)

    def clone(self, graph) -> int:
        clone = _P()
        self("cuGraphClone", ctypes.byref(clone), graph)
        return clone.value

    def find_in_clone(self, node: int, clone: int) -> int:
        copy = _P()
        self("cuGraphNodeFindInClone", ctypes.byref(copy), node, clone)
        return copy.value

    def destroy_node(self, node: int) -> None:
        self("cuGraphDestroyNode", node)

    def instantiate(self, graph) -> int:
        executable = _P()
        self("cuGraphInstantiateWithFlags", ctypes.byref(executable), graph, 0)
        return executable.value

    def launch(self, executable: int, stream: int) -> None:
        self("cuGraphLaunch", executable, stream)


def segments(driver, listed: list[int], marker_ptr: int, count: int) -> list[list[int]]:
    """The nodes of each of ``count`` captures among a graph's ``listed`` nodes, cut at the marker memsets (values
    1 .. count), which belong to none.

    The driver lists a graph's nodes in the order they were added, which for one stream is the capture's order;
    the markers, found in that order with their values counting up, check it. A capture on one stream forms a
    chain, so each segment holds exactly one capture's work."""
    cut: list[list[int]] = []
    for node in listed:
        value = driver.marker_value(node, marker_ptr)
        if value is not None:
            if value != len(cut) + 1:
                raise DriverError(f"marker {value} listed where marker {len(cut) + 1} was expected")
            cut.append([])
        elif not cut:
            raise DriverError("the captured graph has nodes before its first marker")
        else:
            cut[-1].append(node)
    if len(cut) != count or not all(cut):
        raise DriverError(f"{len(cut)} segments ({sum(not c for c in cut)} empty) for {count} captures")
    return cut


def split(driver, graph, marker_ptr: int, count: int) -> list[int]:
    """A graph per capture (see ``segments``), each holding only that capture's nodes and the edges among them.

    Cut by halving: a clone of ``graph`` without the markers is split into a clone holding the first half of the
    captures and itself holding the rest, and so on down to one capture each. Each node is then looked up and
    destroyed about log2(count) times, where cutting each capture from its own clone of the whole would take count
    (a driver call each: 35 buckets of ~5,700 nodes took ~1 s that way on an H100)."""
    listed = driver.nodes(graph)
    cut = segments(driver, listed, marker_ptr, count)
    made: list[int] = []
    try:
        root = _clone(driver, graph, made)
        kept = set(chain.from_iterable(cut))
        groups = [[driver.find_in_clone(node, root) for node in seg] for seg in cut]
        for node in listed:
            if node not in kept:
                driver.destroy_node(driver.find_in_clone(node, root))
        return _halve(driver, root, groups, made)
    except Exception:
        destroy(driver, [], made)
        raise


def _clone(driver, graph, made: list[int]) -> int:
    made.append(driver.clone(graph))
    return made[-1]


def _halve(driver, graph, groups: list[list[int]], made: list[int]) -> list[int]:
    """A graph per group of ``graph``'s nodes (its only nodes), each holding that group alone; ``graph`` itself
    becomes the last."""
    if len(groups) == 1:
        held = len(driver.nodes(graph))
        if held != len(groups[0]):
            raise DriverError(f"a cut graph kept {held} nodes, not {len(groups[0])}")
        return [graph]
    half = len(groups) // 2
    clone = _clone(driver, graph, made)
    front = [[driver.find_in_clone(node, clone) for node in group] for group in groups[:half]]
    for node in chain.from_iterable(groups[half:]):
        driver.destroy_node(driver.find_in_clone(node, clone))
    for node in chain.from_iterable(groups[:half]):
        driver.destroy_node(node)
    return _halve(driver, clone, front, made) + _halve(driver, graph, groups[half:], made)


def destroy(driver, executables: list[int], graphs: list[int]) -> None:
    """Free executables and graphs made here, best effort (an executable still running is freed when it
    completes)."""
    for name, handles in (("cuGraphExecDestroy", executables), ("cuGraphDestroy", graphs)):
        for handle in handles:
            try:
                driver(name, handle)
            except DriverError as exc:
                logger.debug("%s", exc)
