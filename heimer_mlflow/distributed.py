"""One evaluation across several processes (GPUs or hosts) with torch.distributed.

Under torchrun (``torchrun --nproc-per-node N ...``, or multi-node with the usual rendezvous
flags) every rank evaluates its shard of the cohort with the engine on its own device, and the
shards combine on rank 0 into what one process would have computed::

    ctx = distributed.from_env(device)                 # None when not launched by torchrun
    dataset = Subset(CohortDataset(cohort, meta), distributed.shard(len(cohort), ctx))
    with distributed.guard(ctx):                       # a failure on any rank fails every rank
        result = run_engine(model, make_loader(dataset, ...), meta, device=ctx.device,
                            should_stop=ctx.peer_failed, progress=ctx.is_main, ...)
    result = distributed.merge(result, ctx)            # rank 0: the whole cohort; others: None
    ...                                                # only rank 0 talks to MLflow
    distributed.shutdown()

NCCL on CUDA (rank on ``cuda:LOCAL_RANK``), gloo on CPU. Only torch.distributed moves data: the
streaming statistics by all-reduce (float64 sums: equal to one pass up to summation order), the
per-subject rows, exclusions, sanity values and the gallery's winning cases by object
collectives to rank 0 (rows in cohort order, gallery ties broken by cohort index, as one pass).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from heimer_mlflow.engine.gallery import CaseGallery, GalleryCase
from heimer_mlflow.engine.result import EngineResult, EngineStopped, SanityResult, maps_from_stats
from heimer_mlflow.engine.run import pick_device
from heimer_mlflow.engine.stats import GroupStats
from heimer_mlflow.errors import HeimerError, one_line

log = logging.getLogger(__name__)

_FAILURE_PREFIX = "heimer/failed/"


@dataclass
class Context:
    """This process's place in the job. ``device`` is what the rank's engine runs on."""

    rank: int
    world_size: int
    local_rank: int
    device: str  # "cuda:LOCAL_RANK" or "cpu"
    backend: str  # "nccl" or "gloo"
    store: dist.Store | None = field(default=None, repr=False)  # for failure notices; None: not ours
    _guards: int = field(default=0, repr=False)
    _failure_key: str | None = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that merges, logs to MLflow and shows progress."""
        return self.rank == 0

    def peer_failed(self) -> bool:
        """Whether a rank has failed inside the current :func:`guard` (one store round trip, no
        collective): pass it as ``run_engine(should_stop=...)`` so that the others stop early."""
        return self.store is not None and self._failure_key is not None and self.store.check([self._failure_key])


_current: Context | None = None
_owned = False  # whether from_env initialised the process group (and shutdown() may destroy it)


def from_env(device: str = "auto", *, timeout: timedelta | None = None) -> Context | None:
    """The job this process belongs to, from torchrun's environment; None when not launched by
    torchrun (``WORLD_SIZE`` unset or 1), i.e. a one-process run.

    Initialises the default process group once (later calls return the same context): NCCL when
    ``device`` resolves to CUDA (``auto`` with a GPU, or ``cuda``), each rank on
    ``cuda:LOCAL_RANK``; gloo on CPU. ``timeout`` bounds every collective (torch's default when
    None). A process group someone else initialised is used as it is.
    """
    global _current, _owned
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return None
    if _current is not None:
        return _current
    if not dist.is_available():
        raise HeimerError("this torch build has no torch.distributed: install a build with it, or run one process")
    if "RANK" not in os.environ:
        raise HeimerError(f"WORLD_SIZE={world_size} but RANK is not set: launch with torchrun --nproc-per-node N ...")
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    chosen = _rank_device(device, rank, local_rank)
    backend = "nccl" if chosen.startswith("cuda") else "gloo"
    store = None
    if dist.is_initialized():
        rank, world_size, backend = dist.get_rank(), dist.get_world_size(), dist.get_backend()
    else:
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        # The rendezvous init_process_group would do, kept so that ranks can post failure notices.

        store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout or default_pg_timeout))
        store.set_timeout(timeout or default_pg_timeout)
        dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=rank,
                                world_size=world_size, timeout=timeout,
                                device_id=torch.device(chosen) if backend == "nccl" else None)
        _owned = True
    _current = Context(rank, world_size, local_rank, chosen, backend, store)
    return _current


def shutdown() -> None:
    """Tear down what :func:`from_env` set up (a process group it did not create is left alone)."""
    global _current, _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _current, _owned = None, False


def shard(n_subjects: int, ctx: Context | None) -> list[int]:
    """This rank's cohort rows: every ``world_size``-th from ``rank``, so each subject is
    evaluated exactly once (no padding, unlike DistributedSampler) and classes stay mixed."""
    if ctx is None:
        return list(range(n_subjects))
    return list(range(ctx.rank, n_subjects, ctx.world_size))


def check_all(error: str | None, ctx: Context | None) -> None:
    """Collective: ``error`` is this rank's one-line failure, or None. When any rank failed,
    every rank raises a HeimerError naming the first failing rank and its message (and the
    others that failed), so rank 0 can end its run as failed. Without ``ctx``: raises ``error``."""
    if ctx is None:
        if error is not None:
            raise HeimerError(error)
        return
    errors: list[str | None] = [None] * ctx.world_size
    dist.all_gather_object(errors, None if error is None else one_line(error, 500))
    failed = [(rank, message) for rank, message in enumerate(errors) if message is not None]
    if failed:
        (rank, message), others = failed[0], failed[1:]
        also = "".join(f"; rank {r} also failed: {m}" for r, m in others)
        raise HeimerError(f"rank {rank} of {ctx.world_size} failed: {message}{also}")


@contextlib.contextmanager
def guard(ctx: Context | None):
    """Run the block on every rank so that a failure on one fails all, none left in a collective.

    A rank whose block raises posts a notice (``ctx.peer_failed()`` turns True everywhere, so
    engines given ``should_stop=ctx.peer_failed`` stop at their next batch); then all ranks meet
    in :func:`check_all` and raise the same HeimerError naming the failing rank (its own
    traceback is logged there, and chained). Without ``ctx`` the block runs as it is.
    """
    if ctx is None:
        yield
        return
    ctx._guards += 1
    key = ctx._failure_key = f"{_FAILURE_PREFIX}{ctx._guards}"
    try:
        try:
            yield
        except Exception as exc:
            stopped = isinstance(exc, EngineStopped) and ctx.peer_failed()
            message = None if stopped else one_line(exc, 500)
            if not stopped:
                if ctx.store is not None:
                    ctx.store.set(key, message)
                if not isinstance(exc, HeimerError):
                    log.error("rank %d failed", ctx.rank, exc_info=exc)
            check_all(message, ctx)
            raise  # only if the rank that stopped us vanished before check_all
        check_all(None, ctx)
    finally:
        ctx._failure_key = None


def merge(result: EngineResult, ctx: Context | None) -> EngineResult | None:
    """Collective: combine every rank's engine result. Rank 0 gets the whole cohort's result (equal
    to one pass: rows in cohort order, statistics summed, maps and channel rankings recomputed from
    them, the global top-k gallery, all exclusions and sanity values); other ranks get None.
    Without ``ctx`` (one process) ``result`` is returned as it is.

    Three collectives: the layouts and galleries of stand-ins for the cases to everyone (so all
    ranks agree on the statistics' keys and shapes, also where a rank saw no subject, and on the
    gallery's winners), one all-reduce of all statistics packed in one buffer, then rows,
    exclusions, sanity values and only the winning gallery cases to rank 0. Statistics and
    galleries combine by their classes' own ``merge``.
    """
    if ctx is None or ctx.world_size == 1:
        return result
    everyone: list = [None] * ctx.world_size
    dist.all_gather_object(everyone, (_layout(result), _shapes(result.stats), _stand_ins(result, ctx.rank)))
    _check_layouts([layout for layout, _, _ in everyone])
    stats = _all_reduce(result.stats, _union_shapes([shapes for _, shapes, _ in everyone]), ctx)
    gallery = CaseGallery(result.gallery_k)
    for _, _, stand_ins in everyone:
        gallery.merge(stand_ins)
    winners = gallery.cases()  # outcome -> [(rank, cohort index)], best first, the same on every rank
    mine = {case.index: case for cases in result.gallery.values() for case in cases}
    part = {
        "subjects": result.subjects, "excluded": result.excluded, "timings": result.timings,
        "chunk_size": result.chunk_size, "positive_maps": result.positive_maps,
        "sanity": ([], [], []) if result.sanity is None else
                  (result.sanity.subject_ids, result.sanity.indices, list(result.sanity.spearman)),
        "gallery": [mine[index] for cases in winners.values() for rank, index in cases if rank == ctx.rank],
    }
    parts = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(part, parts, dst=0)
    if not ctx.is_main:
        return None

    subjects = _concat_rows([p["subjects"] for p in parts])
    maps, ranking = maps_from_stats(stats, result.feature_layers)
    sent: dict[int, GalleryCase] = {case.index: case for p in parts for case in p["gallery"]}
    sanity = [sum((list(p["sanity"][i]) for p in parts), []) for i in range(3)]
    chunk_sizes = [p["chunk_size"] for p in parts if p["chunk_size"] is not None]
    return dataclasses.replace(
        result, subjects=subjects, maps=maps, feature_ranking=ranking, stats=stats,
        gallery={outcome: [sent[index] for _, index in cases] for outcome, cases in winners.items()},
        sanity=SanityResult.of(*sanity),
        excluded=sorted((e for p in parts for e in p["excluded"]), key=lambda e: e["index"]),
        chunk_size=min(chunk_sizes) if chunk_sizes else None,
        timings=_merge_timings([p["timings"] for p in parts], len(subjects["index"])),
        world_size=ctx.world_size, positive_maps={k: v for p in parts for k, v in p["positive_maps"].items()},
    )


# --------------------------------------------------------------------------- helpers


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise HeimerError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def _rank_device(device: str, rank: int, local_rank: int) -> str:
    """``cuda:LOCAL_RANK`` for auto (with CUDA) or cuda; ``cpu`` otherwise."""
    if device == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        chosen = pick_device(device)  # unknown or unavailable devices end there
        if chosen.type not in ("cuda", "cpu"):
            raise HeimerError(f"device {device!r} cannot be used with torchrun: use auto, cpu or cuda")
        if chosen.index is not None:
            raise HeimerError(
                f"device {device!r}: under torchrun each rank uses cuda:LOCAL_RANK; pass cuda or auto "
                "(choose the GPUs with CUDA_VISIBLE_DEVICES)"
            )
        kind = chosen.type
    if kind == "cpu":
        return "cpu"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_rank >= count:
        raise HeimerError(
            f"rank {rank} has LOCAL_RANK {local_rank} but {count} CUDA devices are visible: "
            f"start at most {count} processes per node (--nproc-per-node), or use --device cpu"
        )
    return f"cuda:{local_rank}"


def _layout(result: EngineResult) -> dict:
    """What every rank must share for the shards to combine."""
    return {
        "class_names": result.stats.class_names, "positive_index": result.stats.positive_index,
        "target_layer": result.target_layer, "feature_layers": result.feature_layers,
        "region_names": result.region_names, "threshold": result.threshold, "gallery_k": result.gallery_k,
        "amp": result.amp, "subject_columns": sorted(result.subjects), "cam_method": result.cam_method,
    }


def _check_layouts(layouts: list[dict]) -> None:
    for rank, layout in enumerate(layouts[1:], start=1):
        for key, value in layout.items():
            if value != layouts[0][key]:
                raise HeimerError(
                    f"ranks evaluated with different settings: {key} is {value!r} on rank {rank} but "
                    f"{layouts[0][key]!r} on rank 0; start every rank with the same options"
                )


def _shapes(stats: GroupStats) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in stats.state.items()}


def _union_shapes(per_rank: list[dict[str, tuple[int, ...]]]) -> dict[str, tuple[int, ...]]:
    """Every statistics key any rank has, sorted (a rank that saw no subject has only the counts)."""
    union: dict[str, tuple[int, ...]] = {}
    owner: dict[str, int] = {}
    for rank, shapes in enumerate(per_rank):
        for key, shape in shapes.items():
            if union.setdefault(key, shape) != shape:
                raise HeimerError(
                    f"statistics {key!r} have shape {list(shape)} on rank {rank} but {list(union[key])} on rank "
                    f"{owner[key]}: every subject must have the model's input grid"
                )
            owner.setdefault(key, rank)
    return dict(sorted(union.items()))


def _all_reduce(stats: GroupStats, shapes: dict[str, tuple[int, ...]], ctx: Context) -> GroupStats:
    """The sum of every rank's statistics (on CPU): this rank's merged (``GroupStats.merge``) into
    zeros of the common layout, laid out as views of one float64 buffer in sorted key order (so a
    key this rank lacks stays zero), then one all-reduce of that buffer (on the rank's GPU for
    NCCL), which merges every rank's the same way; ``stats`` itself is left as it was."""
    device = torch.device(ctx.device if ctx.backend == "nccl" else "cpu")
    sizes = [math.prod(shape) for shape in shapes.values()]
    flat = torch.zeros(sum(sizes), dtype=torch.float64, device=device)
    views = {key: part.view(shape) for (key, shape), part in zip(shapes.items(), flat.split(sizes))}
    GroupStats.from_state(views, stats.class_names, stats.positive_index).merge(stats)  # adds into ``flat``
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    parts = flat.cpu().split(sizes)
    state = {key: part.view(shape).clone() for (key, shape), part in zip(shapes.items(), parts)}
    return GroupStats.from_state(state, stats.class_names, stats.positive_index)


def _stand_ins(result: EngineResult, rank: int) -> CaseGallery:
    """The rank's gallery with each case standing in as (rank, cohort index): small to send, unlike
    the cases; merged (``CaseGallery.merge``) they give the global winners and who holds them."""
    gallery = CaseGallery(result.gallery_k)
    for outcome, cases in result.gallery.items():
        for case in cases:
            index = int(case.index)
            gallery.offer(outcome, float(case.confidence), index, lambda index=index: (rank, index))
    return gallery


def _concat_rows(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every rank's per-subject columns as one table in cohort order (ranks without rows skipped,
    so that their empty float arrays do not change the columns' dtypes)."""
    filled = [p for p in parts if len(p["index"])] or parts[:1]
    order = np.argsort(np.concatenate([p["index"] for p in filled]), kind="stable")
    return {name: np.concatenate([p[name] for p in filled])[order] for name in filled[0]}


def _merge_timings(per_rank: list[dict[str, float]], n_subjects: int) -> dict[str, float]:
    """The slowest rank's seconds; throughput of the whole job over the slowest rank's time."""
    keys = {key for timings in per_rank for key in timings if key != "subjects_per_s"}
    merged = {key: max(t[key] for t in per_rank if key in t) for key in sorted(keys)}
    total = merged.get("total_s", 0.0)
    merged["subjects_per_s"] = n_subjects / total if total > 0 else float("nan")
    return merged


def from_main(prepare, ctx: Context | None):
    """Rank 0 runs ``prepare()`` and every rank gets its result (pickled through
    ``broadcast_object_list``): one process reads the registry and validates the cohort, and
    every rank evaluates the same model, subjects and settings. A failure there ends every
    rank: rank 0 with its own error, the others with a HeimerError carrying its one line.
    Without ``ctx``: ``prepare()``."""
    if ctx is None:
        return prepare()
    if ctx.is_main:
        try:
            value = prepare()
        except BaseException as exc:
            dist.broadcast_object_list([("error", one_line(exc, 500))], src=0)
            raise
        dist.broadcast_object_list([("ok", value)], src=0)
        return value
    payload = [None]
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        raise HeimerError(f"rank 0 could not start the evaluation: {value}")
    return value


def local_world_size(ctx: Context | None) -> int:
    """Processes on this host (torchrun's LOCAL_WORLD_SIZE): they share its cores."""
    return 1 if ctx is None else max(1, _env_int("LOCAL_WORLD_SIZE", 1))
