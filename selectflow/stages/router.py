"""Rule-level glue of the router stage (rules/router.smk): shard files in, router-data files out.

* :func:`router_dump` (rule ``router_dump``): a group of JSONL shards → one HDF5 file each
  in the group's store, one model load, a rerun reusing every stored shard that
  :func:`reusable_shard` accepts (:func:`dump_shard_group`);
* :func:`link_router_data` (checkpoint ``router_data``, one job for the whole pool): every
  stored shard hard-linked to ``router_data/{dataset}/{shard}.h5``, and their listing;
* :func:`dump_shard_file`: one shard → one HDF5 file (no store, no reuse);
* :func:`dump_target` (rules ``target_router``, ``compare_target_router``): the target
  records of ``selection.target`` (or the comparison's target set) → one HDF5 file.

The maths of the dump is :class:`selectflow.router.dump.RouterDumper`; the file layout
:mod:`selectflow.router.routerfile`.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd

from selectflow.config import RouterDumpConfig
from selectflow.data.records import read_jsonl
from selectflow.router.dump import DumpSettings, RouterDumper
from selectflow.router.routerfile import shard_header, write_router_shard
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import atomic_path
from selectflow.runtime.tables import read_tsv, write_tsv

log = logging.getLogger(__name__)

TARGET_DATASET = "target"  # the dataset name of selection.target's records (their ids: target:<line>)


def dump_settings(cfg: RouterDumpConfig, batch_size: int) -> DumpSettings:
    """The dump settings of the ``router_dump`` config section, with the job's (retry-scaled) batch size."""
    names = {f.name for f in fields(DumpSettings)}
    return DumpSettings(**{**{k: v for k, v in asdict(cfg).items() if k in names}, "batch_size": batch_size})


def router_dump(
    model_path: str,
    shard_jsonls: list[str],
    store_h5s: list[str],
    manifest_tsv: str,
    cfg: RouterDumpConfig,
    batch_size: int,
) -> None:
    """Rule ``router_dump``: the group of shards → its store files and the group table ``manifest_tsv``."""
    dump_shard_group(model_path, shard_jsonls, store_h5s, manifest_tsv, dump_settings(cfg, batch_size))


def _shard_attrs(dumper: RouterDumper, model_path: str, shard_jsonl: str, settings: DumpSettings) -> dict:
    return {
        "model_path": str(model_path),
        "config_digest": settings.digest(),
        "dtype": str(next(dumper.model.parameters()).dtype).replace("torch.", ""),
        "source": str(shard_jsonl),
        "router_capture": dumper.capture.summary(),
        "batch_size": dumper.effective_batch_size,
    }


def _read_shard_records(shard_jsonl: str) -> list[dict]:
    records = read_jsonl(shard_jsonl)
    if not records:
        raise SelectFlowError(f"shard {shard_jsonl} is empty; rerun the split_dataset rule")
    return records


def _dump_one(
    dumper: RouterDumper, records: list[dict], model_path: str, shard_jsonl: str, out_h5: str, settings: DumpSettings
) -> None:
    shard = dumper.dump(records)
    shard.attrs = _shard_attrs(dumper, model_path, shard_jsonl, settings)
    write_router_shard(out_h5, shard)


def dump_shard_file(model_path: str, shard_jsonl: str, out_h5: str, settings: DumpSettings) -> int:
    """Dump one JSONL shard of normalised records to ``out_h5``; the number of samples."""
    return _dump_records(model_path, _read_shard_records(shard_jsonl), shard_jsonl, out_h5, settings)


def dump_target(model_path: str, target_jsonl: str, out_h5: str, cfg: RouterDumpConfig, batch_size: int) -> int:
    """Rules ``target_router`` and ``compare_target_router``: the target records → one router file.

    ``target_jsonl`` is read as a dataset named ``target`` (any format a dataset may have, each
    record's own: :func:`selectflow.data.records.read_dataset`, so a held-out slice of a pool of
    several formats is read as it was written) and dumped by the pool's model with the pool's
    settings, so its features are the pool's kind. The number of records.
    """
    from selectflow.data.records import read_dataset

    records = read_dataset(target_jsonl, TARGET_DATASET, one_format=False)
    return _dump_records(model_path, records, target_jsonl, out_h5, dump_settings(cfg, batch_size))


def _dump_records(model_path: str, records: list[dict], source: str, out_h5: str, settings: DumpSettings) -> int:
    dumper = RouterDumper.from_path(model_path, settings)
    try:
        log.info(
            "dumping %d samples from %s with batch size %d on %s",
            len(records),
            source,
            settings.batch_size,
            dumper.device,
        )
        _dump_one(dumper, records, model_path, source, out_h5, settings)
    finally:
        dumper.close()
    return len(records)


def _newest_mtime(path: str | Path) -> float:
    """The newest modification time of ``path`` or of any file under it (a model folder)."""
    path = Path(path)
    times = [path.stat().st_mtime]
    if path.is_dir():
        times += [p.stat().st_mtime for p in path.rglob("*") if p.is_file()]
    return max(times)


def reusable_shard(
    store_h5: str, shard_jsonl: str, records: list[dict], model_path: str, settings: DumpSettings
) -> str | None:
    """Why the stored dump ``store_h5`` of ``shard_jsonl`` cannot be reused, or None when it can.

    Reusable: complete, from this model folder, these settings (digest) and this shard, the
    same sample ids in the same order, newer than the shard file and every model file, and
    with the hidden-state means when ``hidden_states`` asks for them (a shard that has them
    is reused when it is off).
    """
    if not Path(store_h5).is_file():
        return "not dumped yet"
    try:
        attrs, ids = shard_header(store_h5)
    except SelectFlowError as exc:
        return str(exc)
    for key, want in (
        ("model_path", str(model_path)),
        ("config_digest", settings.digest()),
        ("source", str(shard_jsonl)),
    ):
        if attrs.get(key) != want:
            return f"{key} is {attrs.get(key)!r}, now {want!r}"
    if settings.hidden_states and not attrs.get("hidden_size"):
        return "it has no hidden-state means (router_dump.hidden_states is on)"
    if list(ids) != [r["sample_id"] for r in records]:
        return "its sample ids differ from the shard's"
    if Path(store_h5).stat().st_mtime < max(_newest_mtime(shard_jsonl), _newest_mtime(model_path)):
        return "older than the shard or the model"
    return None


def dump_shard_group(
    model_path: str, shard_jsonls: list[str], store_h5s: list[str], manifest_tsv: str, settings: DumpSettings
) -> int:
    """Dump a group of shards with one model load; one file per shard; the number of samples.

    Each finished shard is written atomically to its ``store_h5s`` entry, a file Snakemake
    does not know as an output (so a failed or killed job does not delete it); a rerun reuses
    every stored shard that :func:`reusable_shard` accepts, so an OOM or a crash costs at
    most the shard in progress. The model is loaded only when a shard needs dumping. The
    ``manifest_tsv`` (the job's declared output) lists shard, store file, rows and whether
    it was reused; checkpoint ``router_data`` links each store file to ``router_data``
    (:func:`link_router_data`).
    """
    dumper = None
    rows = []
    for store in map(Path, store_h5s):  # temp files of a killed attempt (atomic_path names them so)
        for stale in store.parent.glob(f".{store.name}.*"):
            stale.unlink(missing_ok=True)
    try:
        for i, (jsonl, store) in enumerate(zip(shard_jsonls, store_h5s), start=1):
            records = _read_shard_records(jsonl)
            why = reusable_shard(store, jsonl, records, model_path, settings)
            if why is None:
                log.info(
                    "shard %d/%d %s: reusing %s (%d samples, dumped by an earlier attempt)",
                    i,
                    len(shard_jsonls),
                    jsonl,
                    store,
                    len(records),
                )
                rows.append((Path(jsonl).stem, store, len(records), "yes"))
                continue
            if dumper is None:
                dumper = RouterDumper.from_path(model_path, settings)
            log.info(
                "shard %d/%d %s: dumping %d samples with batch size %d on %s (%s)",
                i,
                len(shard_jsonls),
                jsonl,
                len(records),
                settings.batch_size,
                dumper.device,
                why,
            )
            _dump_one(dumper, records, model_path, jsonl, store, settings)
            log.info("shard %d/%d done: %s", i, len(shard_jsonls), store)
            rows.append((Path(jsonl).stem, store, len(records), "no"))
    finally:
        if dumper is not None:
            dumper.close()
    write_tsv(pd.DataFrame(rows, columns=["shard", "store", "n_samples", "reused"]), manifest_tsv)
    return sum(row[2] for row in rows)


def link_router_data(manifests: list[str], listing_tsv: str) -> int:
    """Checkpoint ``router_data``: link the stored shards of the group tables ``manifests`` into place.

    ``manifests`` are ``router_store/{dataset}/{first shard}.group.tsv`` (:func:`dump_shard_group`);
    each store file they list becomes ``{dataset}/{shard}.h5`` beside ``listing_tsv``, a hard
    link (no copy; a copy where the file system has none), and ``listing_tsv`` gets one row a
    shard (``dataset``, ``shard``, ``path``, ``n_samples``). One job for the whole pool: a job a
    shard made a dry run over 20,000 shards take 96 s (README "Scale"). Returns the shards linked.
    """
    root, rows = Path(listing_tsv).parent, []
    for manifest in manifests:
        dataset = Path(manifest).parent.name
        table = read_tsv(manifest, "router_dump group table")
        for shard, store, n in zip(table["shard"], table["store"], table["n_samples"]):
            if not Path(store).is_file():
                raise SelectFlowError(
                    f"stored shard {store}, listed in {manifest}, is missing; delete {manifest} "
                    "and run `snakemake router_data -R router_data`: that group's job dumps it "
                    "again (its other shards are reused)"
                )
            target = root / dataset / f"{shard}.h5"
            _link(Path(store), target)
            rows.append((dataset, shard, str(target), int(n)))
    write_tsv(pd.DataFrame(rows, columns=["dataset", "shard", "path", "n_samples"]), listing_tsv)
    log.info("linked %d router-data shards of %d groups", len(rows), len(manifests))
    return len(rows)


def _link(store: Path, target: Path) -> None:
    """``target`` the same file as ``store``: a hard link, or an atomic copy where there are none."""
    if target.exists() and os.path.samefile(store, target):
        return
    with atomic_path(target, suffix=".h5") as tmp:
        tmp.unlink()  # the link takes the temp name
        try:
            os.link(store, tmp)
        except OSError:
            shutil.copyfile(store, tmp)
