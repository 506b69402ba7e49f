"""Prometheus metrics: one CollectorRegistry per app, so two apps in one process (tests) never collide.

Engine-state gauges and token counters are read at scrape time from the async engine's stats snapshot (taken on
the engine thread after each step), so the scrape never touches live engine state; latency histograms are fed by
the async engine as tokens are dispatched.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from unifer.engine.async_engine import AsyncLLMEngine
from unifer.engine.outputs import RequestOutput

_TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class _EngineCollector(Collector):
    def __init__(self, engine: AsyncLLMEngine, model_name: str) -> None:
        self.engine = engine
        self.labels = {"model_name": model_name}

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=list(self.labels))
        g.add_metric(list(self.labels.values()), value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=list(self.labels))
        c.add_metric(list(self.labels.values()), value)
        return c

    def collect(self):
        s = self.engine.stats
        yield self._gauge("unifer_num_requests_running", "Requests scheduled in the running batch", s.num_running)
        yield self._gauge("unifer_num_requests_waiting", "Requests waiting to be scheduled", s.num_waiting)
        yield self._gauge("unifer_kv_cache_usage_ratio", "Share of KV-cache blocks in use (0..1)", s.kv_usage)
        yield self._gauge("unifer_kv_cache_free_blocks", "Free KV-cache blocks", s.num_free_blocks)
        rate = s.prefix_hits / s.prefix_queries if s.prefix_queries else 0.0
        yield self._gauge("unifer_prefix_cache_hit_rate", "Prompt tokens found in the prefix cache / looked up", rate)
        yield self._counter("unifer_prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                            s.prefix_queries)
        yield self._counter("unifer_prefix_cache_hits", "Prompt tokens found in the prefix cache", s.prefix_hits)
        yield self._counter("unifer_prompt_tokens", "Prompt tokens admitted", s.num_prompt_tokens)
        yield self._counter("unifer_generation_tokens", "Tokens generated", s.num_generated_tokens)
        yield self._counter("unifer_engine_step_errors", "Engine steps that raised", self.engine.num_step_errors)
        for key, value in s.backend:  # e.g. the tpu backend's compilations, cached_compilations, compile_seconds
            yield self._gauge(f"unifer_backend_{key}", f"Backend statistic {key} (Backend.stats())", value)


class ServerMetrics:
    """Implements the async engine's StatsListener and renders /metrics."""

    def __init__(self, engine: AsyncLLMEngine, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(engine, model_name))
        labels = ["model_name"]
        self._ttft = Histogram("unifer_time_to_first_token_seconds", "Time from arrival to the first token",
                               labels, buckets=_TTFT_BUCKETS, registry=self.registry).labels(model_name)
        self._itl = Histogram("unifer_inter_token_latency_seconds", "Time between a request's successive outputs",
                              labels, buckets=_ITL_BUCKETS, registry=self.registry).labels(model_name)
        self._finished = Counter("unifer_requests_finished", "Finished requests by reason",
                                 ["model_name", "finish_reason"], registry=self.registry)
        self._model = model_name

    # StatsListener ------------------------------------------------------------------------------------------
    def on_first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def on_token_gap(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def on_finish(self, output: RequestOutput) -> None:
        for o in output.outputs:
            self._finished.labels(self._model, o.finish_reason or "unknown").inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
