"""Discovery of backend plugins through entry points, and the selection rules of DESIGN.md."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from unifer.backends import hookspecs
from unifer.backends.backend import API_VERSION, Availability, Backend

ENTRY_POINT_GROUP = "unifer.backends"


class BackendSelectionError(RuntimeError):
    """No backend, or no single backend, can be chosen; the message says how to choose."""


@dataclass
class PluginFailure:
    plugin: str
    stage: str  # "import", "register", "probe" or "contract"
    error: str


@dataclass
class BackendEntry:
    backend: Backend
    plugin: str
    availability: Availability = field(default_factory=lambda: Availability(False, "not probed"))


def api_compatible(backend_version: str, core_version: str = API_VERSION) -> bool:
    try:
        b_major, b_minor = (int(x) for x in backend_version.split(".")[:2])
        c_major, c_minor = (int(x) for x in core_version.split(".")[:2])
    except ValueError:
        return False
    return b_major == c_major and b_minor <= c_minor


def _safe_probe(backend: Backend) -> Availability:
    try:
        result = backend.probe()
    except Exception as exc:  # a probe must not raise; one that does is reported, not fatal
        return Availability(False, f"probe raised {type(exc).__name__}: {exc}")
    if not isinstance(result, Availability):
        return Availability(False, f"probe returned {type(result).__name__}, not Availability")
    return result


class BackendRegistry:
    """Backends registered by plugins, with what went wrong for the plugins that were skipped."""

    def __init__(self) -> None:
        self._entries: dict[str, BackendEntry] = {}
        self.failures: list[PluginFailure] = []
        self._plugin = "<direct>"

    def add(self, backend: Backend) -> None:
        """Called by a plugin's ``unifer_register_backends`` hook."""
        if not isinstance(backend, Backend):
            raise TypeError(f"registry.add expects a unifer.backends.Backend instance, got {type(backend).__name__}")
        if not backend.name:
            raise ValueError(f"{type(backend).__name__} has no name")
        if backend.name in self._entries:
            other = self._entries[backend.name].plugin
            raise ValueError(f"backend name {backend.name!r} is already registered by plugin {other!r}")
        if not api_compatible(backend.api_version):
            self.failures.append(PluginFailure(
                self._plugin, "contract",
                f"backend {backend.name!r} targets contract api_version {backend.api_version}, "
                f"but this unifer provides {API_VERSION} (same major and a minor <= {API_VERSION} required)"))
            return
        self._entries[backend.name] = BackendEntry(backend, self._plugin)

    def entries(self) -> list[BackendEntry]:
        return sorted(self._entries.values(), key=lambda e: (-e.backend.priority, e.backend.name))

    def names(self) -> list[str]:
        return [e.backend.name for e in self.entries()]

    def entry(self, name: str) -> BackendEntry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise BackendSelectionError(f"unknown backend {name!r}; discovered backends: {known}") from None

    def probe_all(self) -> None:
        for entry in self._entries.values():
            entry.availability = _safe_probe(entry.backend)

    def register_plugin(self, plugin_name: str, hook) -> None:
        """Run one plugin's registration hook; on any error, undo what it added and record the failure."""
        before = set(self._entries)
        self._plugin = plugin_name
        try:
            hook(registry=self)
        except Exception as exc:
            for name in set(self._entries) - before:
                del self._entries[name]
            self.failures.append(PluginFailure(plugin_name, "register", f"{type(exc).__name__}: {exc}"))
        finally:
            self._plugin = "<direct>"


def _allowed_plugins() -> set[str] | None:
    raw = os.environ.get("UNIFER_PLUGINS", "").strip()
    return {p.strip() for p in raw.split(",") if p.strip()} if raw else None


def discover(probe: bool = True) -> BackendRegistry:
    """Load every ``unifer.backends`` entry point (restricted by UNIFER_PLUGINS) and collect their backends."""
    registry = BackendRegistry()
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    allowed = _allowed_plugins()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:
            registry.failures.append(PluginFailure(ep.name, "import", f"{type(exc).__name__}: {exc}"))
    for impl in pm.hook.unifer_register_backends.get_hookimpls():
        registry.register_plugin(impl.plugin_name, impl.function)
    if probe:
        registry.probe_all()
    return registry


def select_backend(name: str | None = None, registry: BackendRegistry | None = None) -> Backend:
    """Explicit name > env UNIFER_BACKEND > the single highest-priority available backend."""
    registry = registry or discover()
    name = name or os.environ.get("UNIFER_BACKEND") or None
    if name:
        entry = registry.entry(name)
        if not entry.availability.ok:
            raise BackendSelectionError(f"backend {name!r} is not available: {entry.availability.reason}")
        return entry.backend
    available = [e for e in registry.entries() if e.availability.ok]
    if not available:
        lines = [f"  {e.backend.name}: {e.availability.reason}" for e in registry.entries()]
        lines += [f"  plugin {f.plugin} ({f.stage}): {f.error}" for f in registry.failures]
        detail = "\n".join(lines) or "  no plugin found; install one, e.g. pip install 'unifer[cpu]'"
        raise BackendSelectionError("no backend is available:\n" + detail)
    best = available[0]
    tied = [e.backend.name for e in available if e.backend.priority == best.backend.priority]
    if len(tied) > 1:
        raise BackendSelectionError(
            f"backends {', '.join(tied)} are available with equal priority {best.backend.priority}; "
            "choose one with --backend NAME, LLM(backend=NAME) or UNIFER_BACKEND=NAME")
    return best.backend
