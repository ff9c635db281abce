"""The bundle checker: fetches and verifies each indexed job's bundle (docs/protocol.md §5.4)
from the API's blob stores and records what it found on the job (docs/protocol.md §7).

A job's inputs (program, C_0, dataset batches) are reachable only through the bundle its
spec binds; a bundle nobody can fetch, or one whose parts do not verify, makes the job
*unverifiable*: no challenger can replay it, so its commitment proves nothing. Verdicts:

- ``verified``: :meth:`Bundle.open` with the job's spec (manifest, binding, program, C_0,
  dataset index), then every other part: the metadata and source files and every dataset
  page and batch (``Bundle.check_complete``). A dataset of more than ``full_steps`` steps
  is *sampled* instead: ``sample`` batches chosen at random (the first and last step always
  among them) with the pages they are in; such a verdict is checked again, with a fresh
  sample, every ``resample_s``. A complete verdict is final.
- ``unavailable``: a part could not be fetched: every store lacks it or does not answer.
  Checked again with exponential backoff (``base_delay_s`` doubling up to ``max_delay_s``);
  ``tries`` counts the checks in a row that failed.
- ``invalid``: a part does not verify (``part`` and ``why`` from :class:`BundleError`): the
  manifest does not bind the job's roots, the program does not encode, a page or batch does
  not hash to its root, or a store serves bytes under a part's address that do not hash to
  it (or are not the size the manifest states). Content that does not verify never will (the
  addresses are hashes): final, unless the failure was a store's bad copy (another store may
  yet serve a good one), which is checked again with backoff like ``unavailable``.
- ``unchecked``: not checked yet, or no stores are configured (``--store``), or the check
  itself failed (an unexpected error, logged; tried again with backoff).

Checks run on their own thread (``run_forever``) or one pass at a time (``run_once``); a
check holds no database transaction while it fetches, so it never blocks the indexer or a
request. Every verdict is logged as one line ``event=bundle_checked job=… bundle=…
status=… part=… why=…`` and, when the status changes, appended to the change feed (an SSE
``job`` event with ``bundle``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db import Change, Job, Meta
from api.derive import verification_status
from protocol.blobs import BlobError, StoreSet, StoreUnreachable, open_stores
from protocol.game import JobSpec
from replay.data.bundle import MAX_SOURCE_BYTES, Bundle, BundleError, fetch_part

log = logging.getLogger("trainproof.api.bundles")

VERIFIED, UNAVAILABLE, INVALID, UNCHECKED = "verified", "unavailable", "invalid", "unchecked"
#: Why a job is unchecked when the API has no stores.
NO_STORES = "no blob stores configured: the API does not fetch bundles (serve/index --store)"
#: The longest ``why`` kept (a store set's message names every store's answer).
MAX_WHY = 2000


@dataclass(frozen=True)
class Verdict:
    """One check of one job's bundle."""

    job_id: int
    bundle: str | None
    status: str
    part: str | None = None
    why: str | None = None
    scope: str | None = None
    #: check again later (a store may yet serve it): unavailable, a bad copy, a sample
    retry: bool = False


class _Probe:
    """The API's store set, read through: when a blob cannot be had, asks each store
    whether it holds anything under that address (``size``: a stat or a HEAD), so that a
    failure is told apart as *unreachable*, *missing* (both: unavailable) or *a bad copy*
    (a store has bytes there that do not verify: invalid)."""

    def __init__(self, stores: StoreSet) -> None:
        self.stores = stores
        #: the last failed read: "unreachable" | "missing" | "bad copy" (a failed read
        #: ends the check: Bundle raises BundleError at once)
        self.last: str | None = None

    def get(self, address: str, max_bytes: int | None = None) -> bytes:
        try:
            return self.stores.get(address, max_bytes=max_bytes)
        except BlobError:
            self.last = self._diagnose(address)
            raise

    def _diagnose(self, address: str) -> str:
        seen: set[str] = set()
        for store in self.stores.stores:
            size = getattr(store, "size", None)
            if size is None:
                seen.add("missing")
                continue
            try:
                size(address)
            except StoreUnreachable:
                seen.add("unreachable")
            except (BlobError, OSError):
                seen.add("missing")
            else:
                seen.add("bad copy")
        if "unreachable" in seen:  # a store that did not answer may hold a good copy
            return "unreachable"
        return "bad copy" if "bad copy" in seen else "missing"

    def put(self, data: bytes) -> str:
        raise BlobError("the bundle checker only reads")

    def put_pointer(self, pointer: Any) -> None:
        raise BlobError("the bundle checker only reads")

    def get_pointer(self, state_root: str) -> Any:
        return self.stores.get_pointer(state_root)


def job_spec(job: Job) -> JobSpec:
    """The JobSpec a job row was registered with (the index keeps every field)."""
    return JobSpec(
        program_root=bytes.fromhex(job.program_root.removeprefix("0x")),
        program_len=job.program_len,
        dataset_root=bytes.fromhex(job.dataset_root.removeprefix("0x")),
        initial_root=bytes.fromhex(job.initial_root.removeprefix("0x")),
        bundle=bytes.fromhex((job.bundle or "0x" + "00" * 32).removeprefix("0x")),
        steps=job.steps,
        every=job.every,
        slots=job.slots,
        stake=int(job.stake),
        bond=int(job.bond),
        clock=job.clock,
        window=job.window,
        train_time=job.train_time,
    )


class BundleChecker:
    """Checks the bundles of the jobs in the index behind ``sessions`` against ``stores``
    (locations as ``open_stores`` reads them, or a StoreSet; none: every job ``unchecked``)."""

    def __init__(
        self,
        sessions: sessionmaker,
        stores: Sequence[str] | StoreSet | None,
        *,
        full_steps: int = 4096,
        sample: int = 64,
        base_delay_s: float = 60.0,
        max_delay_s: float = 3600.0,
        resample_s: float = 6 * 3600.0,
        per_pass: int = 16,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.sessions = sessions
        if isinstance(stores, StoreSet) or stores is None:
            self.stores = stores
        else:
            self.stores = open_stores(list(stores)) if stores else None
        self.full_steps = full_steps
        self.sample = sample
        self.delays = (base_delay_s, max_delay_s)
        self.resample_s = resample_s
        self.per_pass = per_pass
        self.clock = clock
        self.rng = rng or random.Random()

    # ------------------------------------------------------------------ checking

    def check(self, job: Job) -> Verdict:
        """Fetch and verify ``job``'s bundle (no database access)."""
        if self.stores is None:
            return Verdict(job.id, job.bundle, UNCHECKED, why=NO_STORES)
        if job.bundle is None or not any(bytes.fromhex(job.bundle.removeprefix("0x"))):
            why = (
                "the job binds no bundle (JobSpec.bundle is zero)"
                if job.bundle
                else "the job binds no bundle (registered on a contract from before bundles)"
            )
            return Verdict(job.id, job.bundle, INVALID, "manifest", why)
        probe = _Probe(self.stores)
        spec = job_spec(job)
        try:
            bundle = Bundle.open(probe, spec.bundle.hex(), spec)
            scope, sampled = self._complete(bundle)
        except BundleError as e:
            return self._failed(job, e, probe)
        return Verdict(job.id, job.bundle, VERIFIED, scope=scope, retry=sampled)

    def _complete(self, bundle: Bundle) -> tuple[str, bool]:
        """Every part but what ``Bundle.open`` checked; a sample of a big dataset's batches.
        Returns (scope, sampled?)."""
        ds = bundle.dataset
        steps = ds.steps
        if steps <= self.full_steps:
            bundle.check_complete()
            return f"complete: {steps} batches, {bundle.manifest.dataset.pages} pages", False
        for source in bundle.metadata().sources:
            fetch_part(bundle.store, source.blob, f"source {source.path}", MAX_SOURCE_BYTES)
        picked = sorted({0, steps - 1, *self.rng.sample(range(steps), min(self.sample, steps))})
        for t in picked:
            ds.batch(t)
        pages = len({t // bundle.manifest.dataset.page_steps for t in picked})
        return (
            f"sampled: {len(picked)} of {steps} batches, {pages} of "
            f"{bundle.manifest.dataset.pages} pages",
            True,
        )

    def _failed(self, job: Job, e: BundleError, probe: _Probe) -> Verdict:
        # BundleError wraps a failed read "from None": the BlobError stays its __context__
        if isinstance(e.__context__, BlobError) and probe.last is not None:
            if probe.last == "bad copy":  # a store's bytes there do not verify
                return Verdict(job.id, job.bundle, INVALID, e.part, e.why, retry=True)
            return Verdict(job.id, job.bundle, UNAVAILABLE, e.part, e.why, retry=True)
        return Verdict(job.id, job.bundle, INVALID, e.part, e.why)

    # ------------------------------------------------------------------ the index

    def due(self, s: Session, now: float) -> list[Job]:
        """Jobs whose bundle is to be checked now: never checked, or their time has come."""
        q = (
            select(Job)
            .where(
                or_(
                    and_(Job.bundle_status == UNCHECKED, Job.bundle_next_check.is_(None)),
                    Job.bundle_next_check <= int(now),
                )
            )
            .order_by(Job.bundle_next_check.is_not(None), Job.bundle_next_check, Job.id)
            .limit(self.per_pass)
        )
        return list(s.scalars(q))

    def record(self, v: Verdict, tries_before: int) -> int | None:
        """Store ``v`` on its job (unless the job changed under it: a reorg); the next check's
        time, or None."""
        now = int(self.clock())
        tries = 0 if v.status == VERIFIED else tries_before + 1
        nxt: int | None = None
        if v.status == VERIFIED and v.retry:
            nxt = now + int(self.resample_s)
        elif v.retry:
            nxt = now + int(min(self.delays[1], self.delays[0] * 2 ** (tries - 1)))
        with self.sessions.begin() as s:
            job = s.get(Job, v.job_id)
            if job is None or job.bundle != v.bundle:
                return None
            before = job.bundle_status
            s.execute(
                update(Job)
                .where(Job.id == v.job_id)
                .values(
                    bundle_status=v.status,
                    bundle_part=v.part,
                    bundle_why=None if v.why is None else v.why[:MAX_WHY],
                    bundle_scope=v.scope,
                    bundle_checked_at=now,
                    bundle_tries=tries,
                    bundle_next_check=nxt,
                )
            )
            if before != v.status:
                tip = s.get(Meta, "tip")
                s.add(
                    Change(
                        kind="job",
                        job_id=job.id,
                        game_id=None,
                        block_number=int(tip.value) if tip else job.updated_block,
                        data={
                            "status": verification_status(job.status, job.open_games),
                            "bundle": v.status,
                        },
                    )
                )
        log.log(
            logging.INFO if v.status == VERIFIED else logging.WARNING,
            "event=bundle_checked job=%d bundle=%s status=%s part=%s why=%r scope=%r tries=%d "
            "next_check_in_s=%s",
            v.job_id, v.bundle, v.status, v.part, v.why, v.scope, tries,
            None if nxt is None else nxt - now,
        )  # fmt: skip
        return nxt

    def mark_unchecked(self) -> int:
        """Without stores: say so on every job not yet checked (one statement)."""
        with self.sessions.begin() as s:
            n = s.execute(
                update(Job)
                .where(Job.bundle_status == UNCHECKED, Job.bundle_why.is_(None))
                .values(bundle_why=NO_STORES)
            ).rowcount
        if n:
            log.info("event=bundle_checked jobs=%d status=unchecked why=%r", n, NO_STORES)
        return n or 0

    def run_once(self, limit: int | None = None) -> list[Verdict]:
        """Check the jobs that are due (at most ``limit`` passes of ``per_pass``; None: until
        none is due)."""
        if self.stores is None:
            self.mark_unchecked()
            return []
        done: list[Verdict] = []
        seen: set[int] = set()
        passes = 0
        while limit is None or passes < limit:
            passes += 1
            with self.sessions() as s:
                jobs = [j for j in self.due(s, self.clock()) if j.id not in seen]
                s.expunge_all()
            if not jobs:
                break
            for job in jobs:
                seen.add(job.id)
                try:
                    verdict = self.check(job)
                except Exception as e:  # a bug, or bytes no check foresaw: not a verdict
                    log.exception("event=bundle_check_failed job=%d", job.id)
                    why = f"the check failed ({type(e).__name__}: {e}); trying again later"
                    verdict = Verdict(job.id, job.bundle, UNCHECKED, why=why, retry=True)
                self.record(verdict, job.bundle_tries or 0)
                done.append(verdict)
        return done

    def run_forever(self, interval: float = 5.0, stop: threading.Event | None = None) -> None:
        """Check due bundles every ``interval`` seconds until ``stop`` is set; a failure of
        the checker itself (the database away) is logged and the loop goes on."""
        while stop is None or not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("event=bundle_check_failed; retrying in %.1fs", interval)
            if stop is not None:
                stop.wait(interval)
            else:
                time.sleep(interval)


# ---------------------------------------------------------------------- reorgs


def saved_checks(s: Session, job_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The bundle checks of ``job_ids``, to carry over a reorg's re-derivation of the jobs
    (:func:`restore_checks`): a verdict is about the bundle, not about the block."""
    cols = ("bundle", "bundle_status", "bundle_part", "bundle_why", "bundle_scope",
            "bundle_checked_at", "bundle_tries", "bundle_next_check")  # fmt: skip
    ids = list(job_ids)
    rows = s.execute(select(Job.id, *(getattr(Job, c) for c in cols)).where(Job.id.in_(ids)))
    return {r[0]: dict(zip(cols, r[1:], strict=True)) for r in rows}


def restore_checks(s: Session, saved: dict[int, dict[str, Any]]) -> None:
    """Put back the checks of re-derived jobs that bind the same bundle as before."""
    for job_id, values in saved.items():
        job = s.get(Job, job_id)
        if job is not None and job.bundle == values["bundle"]:
            for k, v in values.items():
                setattr(job, k, v)
