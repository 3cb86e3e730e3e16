"""ModelStatistics through the gateway: which services a model's statistics come from, and
their answers summed into one, as if one server had run every call.

A tool like Triton's perf_analyzer reads the statistics before and after a run and divides
the differences; its calls went to every replica (and, under a split policy, to every
framework in the split), so the answer must cover all of them, with every duration summed
field by field: a partial sum (compute_infer from one replica, compute_input from another)
breaks its check that the compute counts agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf.message import Message

from gateway.policy import ModelPolicy
from serving.pb import inference_pb2 as pb

__all__ = ["merge_statistics", "statistics_frameworks"]


def statistics_frameworks(
    model: str,
    explicit: str | None,
    policy: ModelPolicy | None,
    default: str,
    available: Iterable[str],
) -> list[str]:
    """The frameworks whose services ran a model's inference calls: the client's choice;
    every framework for all models (an empty name); a split's frameworks of non-zero
    weight; else the one framework that serves the model (a shadow's mirrored calls are the
    gateway's, not the client's, and are left out)."""
    served = list(available)
    if explicit is not None:
        return [explicit]
    if not model:
        return served
    if policy is None:
        return [default]
    if policy.split is not None:
        weighted = {name for name, weight in policy.split.items() if weight > 0}
        return [framework for framework in served if framework in weighted]
    return [policy.primary]


def merge_statistics(answers: Iterable[pb.ModelStatisticsResponse]) -> pb.ModelStatisticsResponse:
    """One answer from several: entries of the same model and version summed, the others
    kept in the order they first appear."""
    merged: dict[tuple[str, str], pb.ModelStatistics] = {}
    for answer in answers:
        for entry in answer.model_stats:
            key = (entry.name, entry.version)
            into = merged.get(key)
            if into is None:
                merged[key] = into = pb.ModelStatistics(name=entry.name, version=entry.version)
            _add_entry(into, entry)
    return pb.ModelStatisticsResponse(model_stats=list(merged.values()))


def _add_entry(into: pb.ModelStatistics, entry: pb.ModelStatistics) -> None:
    into.last_inference = max(into.last_inference, entry.last_inference)
    into.inference_count += entry.inference_count
    into.execution_count += entry.execution_count
    _add_durations(into.inference_stats, entry.inference_stats)
    batches = {batch.batch_size: batch for batch in into.batch_stats}
    for batch in entry.batch_stats:
        target = batches.get(batch.batch_size)
        if target is None:
            batches[batch.batch_size] = target = into.batch_stats.add(batch_size=batch.batch_size)
        _add_durations(target, batch)
    memory = {(usage.type, usage.id): usage for usage in into.memory_usage}
    for usage in entry.memory_usage:
        found = memory.get((usage.type, usage.id))
        if found is None:
            memory[(usage.type, usage.id)] = found = into.memory_usage.add(
                type=usage.type, id=usage.id
            )
        found.byte_size += usage.byte_size
    _add_response_stats(into.response_stats, entry.response_stats)


def _add_response_stats(
    into: Mapping[str, pb.InferResponseStatistics], more: Mapping[str, pb.InferResponseStatistics]
) -> None:
    for key, stats in more.items():
        _add_durations(into[key], stats)  # a protobuf map makes the entry on first use


def _add_durations(into: Message, more: Message) -> None:
    """Adds every StatisticDuration field of `more` to `into`'s (by descriptor, so a field
    Triton adds to the message is summed too, not dropped)."""
    for field in more.DESCRIPTOR.fields:
        if field.message_type is pb.StatisticDuration.DESCRIPTOR and more.HasField(field.name):
            theirs = getattr(more, field.name)
            ours = getattr(into, field.name)
            ours.count += theirs.count
            ours.ns += theirs.ns
