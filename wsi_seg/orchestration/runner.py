"""Run many slides on a Dask cluster: one task per block, a finishing task per slide.

The client prepares each slide (tissue, plan, work directory), submits its block tasks, and as
the blocks of a slide complete submits its finishing task. A slide that fails (bad file,
unreadable region, anything) is recorded with a one-line cause and the others go on. Progress
is shown over tiles (overall, with tiles/s and ETA) with one line per finished slide.
``OUT/run.json`` records the configuration, versions, per-slide status, stage timings, tiles/s
and errors, and is rewritten atomically whenever a slide finishes (for a large cohort, as often
as 5 % of the client's time allows), so a killed run leaves a truthful record; rerunning the
same command resumes. A finished slide's entry in it and its figures for the summaries are
serialised once, into a temporary file of the client's (:class:`_Kept`), and its report let
go: the client's memory per finished slide is a few numbers, whatever the cohort's size.
Slides are prepared and submitted as the run goes, a few at a time (:data:`MAX_SLIDES_IN_FLIGHT`,
:data:`MAX_BLOCKS_IN_FLIGHT`), so a cohort of any size is a bounded graph and a slide's
finishing overlaps the next slides' blocks.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from distributed.comm.core import CommClosedError

from wsi_seg import __version__
from wsi_seg.core.errors import RunStopped, WsiSegError, printable
from wsi_seg.core.files import json_text, nested_json_text, read_output_text, write_output
from wsi_seg.core.locations import OutputLocation, SlideLocation, SlideURL, slide_location
from wsi_seg.core.locks import SlideLock, holder, try_lock
from wsi_seg.core.naming import output_names, slide_stem
from wsi_seg.orchestration import progress
from wsi_seg.orchestration.cluster import (
    BLOCK_GPU_SHARE,
    ClusterConfig,
    WorkerPlan,
    connect,
    share_storage,
)
from wsi_seg.orchestration.pipeline import (
    REPORT,
    BlockResult,
    RunConfig,
    SlideJob,
    SlideReport,
    WarmResult,
    check_writable,
    final_dir_for,
    finish_slide,
    finished_report,
    folder_identity,
    out_dir_problem,
    prepare_slide,
    run_block,
    sum_times,
)
from wsi_seg.orchestration.records import RUN_JSON, run_score, run_score_lines, versions
from wsi_seg.orchestration.report import score_from_json
from wsi_seg.orchestration.warmup import warm_worker_async, warm_workers
from wsi_seg.stages.card import model_label, verify_model_file
from wsi_seg.stages.infer import InferConfig, check_batch_bytes, served_card

if TYPE_CHECKING:  # metrics imports the geometry stack; the client needs only the type
    from wsi_seg.evaluation.metrics import OverlapScore
    from wsi_seg.stages.result_store import StoreLease

#: Seconds between looks at slides other runs hold, and between lines saying the run waits.
HELD_POLL_S = 2.0
#: Slides whose blocks are in flight at once, and blocks: the client prepares the next slide
#: only while both are below these, so a cohort of any size is a bounded graph (not one graph
#: of every slide's blocks) and a slide's finishing overlaps the next slides' blocks.
MAX_SLIDES_IN_FLIGHT = 4
MAX_BLOCKS_IN_FLIGHT = 256
#: The most of the client's time rewriting run.json may take (see Runner.write_run_json).
RUN_JSON_BUSY_SHARE = 0.05
HELD_NOTICE_S = 60.0
#: What the summaries show of a slide, as report.json holds it.
SUMMARY_KEYS = ("tissue_mm2", "tumour_mm2", "score", "tiles_per_s", "classes")
#: Where run.json's slide entries go in the text of the rest of it (spliced in as text).
_SLIDES = "\x00slides\x00"
#: Seconds to wait for a worker declaring the resource blocks ask for (--gpu-resource).
RESOURCE_WAIT_S = 60.0

__all__ = ["RUN_JSON", "RunResult", "Runner", "SlideResult", "SlideState", "one_line", "run_score",
           "run_score_lines", "run_slides", "versions", "warm_worker_async"]


@dataclass(frozen=True, slots=True)
class JobCounts:
    """What the run's records say of a slide's job once the job itself is let go."""

    n_tiles: int
    n_blocks: int
    n_blocks_done: int

    @classmethod
    def of(cls, job: SlideJob) -> JobCounts:
        return cls(job.n_tiles, job.n_blocks, job.n_blocks_done)


@dataclass(slots=True)
class SlideState:
    """Book-keeping of one slide during a run (mutable, client side only; slots: a cohort's
    client holds one per slide)."""

    path: SlideLocation
    name: str  # the output folder name, distinct within the run
    status: str = "pending"  # pending | running | ok | skipped | held | failed
    error: str | None = None
    job: SlideJob | None = None
    # The job's figures, kept when a published slide lets its job go (its tissue polygons
    # and block plan are the bulk of what a cohort's client would otherwise hold per slide).
    counts: JobCounts | None = None
    remaining: int = 0
    results: list[BlockResult] = field(default_factory=list)
    started: float | None = None
    # This run published the slide's outputs (its report.json is this run's; the report
    # itself is not held: its run.json entry and summary figures are kept in ``kept``).
    published: bool = False
    bar: Any = None  # this slide's progress bar while its blocks run
    # Whether the slide's outputs were complete at the run's start, asked once per run
    # (None: not yet); ``taken`` is why its output folder cannot be used, if it cannot.
    done: bool | None = None
    taken: WsiSegError | None = None
    # Where the run's temporary file keeps the slide's run.json entry and its figures for
    # the summaries (:meth:`_Kept.add`): a published slide's, from its report; a skipped
    # one's figures, from its finished report.json. None: nothing kept.
    kept: tuple[int, int, int] | None = None
    # This run's hold on the slide's outputs (another run's slide is "held" here): a file
    # lock on local disk, a lease in a store.
    lock: SlideLock | StoreLease | None = None
    # (mtime_ns, size) of its report.json when ``done`` was decided, (ETag, size) in a
    # store (None: no report).
    report_stamp: tuple[int | str, int] | None = None

    def unlock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def result(self, out_dir: OutputLocation) -> SlideResult:
        """The slide's outcome, as the Python API returns it."""
        final = final_dir_for(out_dir, self.path, self.name)
        there = self.status in ("ok", "skipped") or self.published
        c = self.job_counts()
        output_dir = final if there and _output_there(final) else None
        report = (None if not self.published or output_dir is None else output_dir / REPORT
                  if isinstance(output_dir, SlideURL) else output_dir.absolute() / REPORT)
        return SlideResult(
            self.path, self.name, self.status, self.error, output_dir, self.published,
            c.n_tiles if c else None, c.n_blocks if c else None,
            c.n_blocks_done if c else None, report)

    def job_counts(self) -> JobCounts | None:
        """The job's figures, whether it is still held or was let go."""
        return JobCounts.of(self.job) if self.job is not None else self.counts

    def record(self, report: SlideReport | None = None,
               slide_dir: OutputLocation | None = None) -> dict[str, Any]:
        """The slide's entry in ``run.json``; with the report this run published for it (in
        ``slide_dir``), its figures too."""
        d: dict[str, Any] = {"slide": str(self.path), "output": self.name,
                             "status": self.status}
        if self.error:
            d["error"] = self.error
        if (c := self.job_counts()) is not None:
            d.update(blocks=c.n_blocks, blocks_resumed=c.n_blocks_done, tiles=c.n_tiles)
        if report is not None and slide_dir is not None:
            r = report
            d["report"] = str(slide_dir / REPORT)
            d.update(tiles_per_s=r.tiles_per_s, wall_s=r.wall_s, blocks_wall_s=r.blocks_wall_s,
                     stage_s=r.stage_s, tumour_mm2=r.tumour_mm2, tissue_mm2=r.tissue_mm2,
                     score=r.score.as_dict() if r.score is not None else None,
                     notes=list(r.notes))
        return d


@dataclass(frozen=True, slots=True)
class SlideResult:
    """One slide of a run.

    Attributes:
        slide: the slide file.
        name: its output folder's name (``OUT/NAME``).
        status: ``ok`` (finished by this run), ``skipped`` (finished before), ``held``
            (another run was working on it) or ``failed`` (see ``error``).
        error: the one-line cause when it failed (or its score did), else None.
        output_dir: ``OUT/NAME`` when the slide's outputs are there, else None.
        finished_here: this run finished the slide (published its outputs; a slide whose
            score failed was published too): :attr:`report` reads its ``report.json``.
        report_file: that ``report.json`` (absolute), when this run finished the slide.
        tiles: tiles over tissue (None when the slide could not be prepared).
        blocks, blocks_resumed: blocks planned, and those an earlier run had finished.
    """

    slide: SlideLocation
    name: str
    status: str
    error: str | None
    output_dir: OutputLocation | None
    finished_here: bool
    tiles: int | None
    blocks: int | None
    blocks_resumed: int | None
    # report.json's place (absolute: the working folder may change before it is read).
    report_file: OutputLocation | None = field(default=None, repr=False)

    @property
    def report(self) -> SlideReport | None:
        """What ``OUT/NAME/report.json`` says, when this run finished the slide (else None),
        read from the file each time it is asked: a run's result holds no slide's report, so
        a cohort's is as small as its list of slides. None too when the file is gone."""
        if not self.finished_here or self.report_file is None:
            return None
        text = read_output_text(self.report_file)
        return None if text is None else SlideReport.from_json(json.loads(text))

    @property
    def score(self) -> OverlapScore | None:
        """This run's score against the slide's truth (None: not scored)."""
        report = self.report
        return report.score if report is not None else None


@dataclass(frozen=True)
class RunResult:
    """What a run did: one :class:`SlideResult` per slide, in the order given, and the
    totals: wall-clock seconds, tiles predicted and published, slides failed."""

    slides: tuple[SlideResult, ...]
    wall_s: float
    tiles: int
    failed: int

    @property
    def ok(self) -> bool:
        """No slide failed."""
        return self.failed == 0

    def count(self, status: str) -> int:
        """Slides with this status (``ok``, ``skipped``, ``held``, ``failed``)."""
        return sum(s.status == status for s in self.slides)

    def reports(self) -> Iterator[SlideReport]:
        """The reports of the slides this run finished, in order, each read from its
        ``report.json`` as the iteration reaches it (none is held)."""
        for s in self.slides:
            if (report := s.report) is not None:
                yield report


def one_line(exc: BaseException) -> str:
    """A one-line cause for any exception (WsiSegError already is one)."""
    if isinstance(exc, WsiSegError):
        return str(exc)
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:300]}"


class _Kept:
    """What the run's records keep of each finished slide, out of the client's memory: its
    ``run.json`` entry, serialised once as it is spliced into each rewrite, and its figures
    for the summaries (:data:`SUMMARY_KEYS`), appended to a temporary file of the client's
    (gone when the run ends, or the process does). A slide holds where they are."""

    def __init__(self) -> None:
        self._file: Any = None

    def add(self, entry: bytes, figures: dict[str, Any]) -> tuple[int, int, int]:
        """Keep these; where they are (offset, entry's length, figures' length)."""
        if self._file is None:
            # Held open for the run (closed by close()), so no context manager.
            self._file = tempfile.TemporaryFile(prefix="wsi-seg-run-")  # noqa: SIM115
        fig = json.dumps(figures).encode("utf-8")
        at = self._file.seek(0, os.SEEK_END)
        self._file.write(entry + fig)
        return at, len(entry), len(fig)

    def entry(self, where: tuple[int, int, int]) -> bytes:
        at, n, _ = where
        return self._read(at, n)

    def figures(self, where: tuple[int, int, int]) -> dict[str, Any]:
        at, n, m = where
        figures: dict[str, Any] = json.loads(self._read(at + n, m))
        return figures

    def _read(self, at: int, n: int) -> bytes:
        self._file.seek(at)
        data: bytes = self._file.read(n)
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class _InFlight:
    """The tasks submitted to the cluster and the slide each belongs to."""

    client: Any
    futures: Any  # distributed.as_completed: yields each future as it ends
    owner: dict[Any, SlideState] = field(default_factory=dict)

    def add(self, future: Any, state: SlideState) -> None:
        self.owner[future] = state
        self.futures.add(future)

    def cancel(self, state: SlideState) -> None:
        for fut, st in list(self.owner.items()):
            if st is state:
                fut.cancel()


class Runner:
    """One run over a list of slides (client side)."""

    def __init__(self, slides: Sequence[SlideLocation], config: RunConfig, cluster: ClusterConfig,
                 quiet: bool = False, gpu_resource: bool | None = None) -> None:
        self.config = config
        self.cluster = cluster
        self.quiet = quiet
        self.gpu_resource = gpu_resource
        paths = [slide_location(p) for p in slides]
        names = output_names(paths)
        self.states = [SlideState(p, names[p]) for p in paths]
        self.started_at = datetime.now(UTC).replace(microsecond=0).isoformat()
        self.t0 = time.perf_counter()
        self.worker_plan: WorkerPlan | None = None
        self.dashboard: str | None = None
        self.startup: list[WarmResult] = []
        self.startup_s: float | None = None
        self.out_identity: tuple[int, int] | None = None  # OUT's (st_dev, st_ino), once made
        self._run_json_at = self._run_json_s = 0.0  # when run.json was last written, and cost
        self._kept = _Kept()
        self._n_scored = 0  # slides published with a score (run.json's and the summary's)

    # -- output --------------------------------------------------------------------------------
    def say(self, text: str, err: bool = False) -> None:
        if err or not self.quiet:
            # One message, one line: a slide's name may hold a newline or terminal escapes.
            progress.write(printable(text), err)

    def write_run_json(self, finished: bool = False, throttled: bool = False) -> None:
        """Rewrite ``OUT/run.json`` (atomically). ``throttled`` (after a slide): only once
        :data:`RUN_JSON_BUSY_SHARE` of the time since the last write is more than that write
        took, so a cohort's record, which grows with its slides, never costs the client more
        than that share of its time (a small run's takes a millisecond: written every time)."""
        now = time.perf_counter()
        if throttled and (now - self._run_json_at) * RUN_JSON_BUSY_SHARE < self._run_json_s:
            return
        self._write_run_json(finished)
        self._run_json_at = time.perf_counter()
        self._run_json_s = self._run_json_at - now

    def _write_run_json(self, finished: bool) -> None:
        record = {
            "wsi_seg_version": __version__,
            "started": self.started_at,
            "finished": datetime.now(UTC).replace(microsecond=0).isoformat() if finished else None,
            "wall_s": round(time.perf_counter() - self.t0, 3),
            # The program by its name, not where one machine installed it.
            "command": ["wsi-seg", *sys.argv[1:]],
            # Where the store is and how it is signed in to stay out ([storage] options).
            "config": {k: v for k, v in asdict(self.config).items() if k != "storage"}
            | {"out_dir": str(self.config.out_dir),
               "model_path": model_label(self.config.model_path)},
            "cluster": asdict(self.cluster),
            "workers": asdict(self.worker_plan) if self.worker_plan else None,
            "dashboard": self.dashboard,
            # Seconds from the run's start until every worker had its model loaded and
            # compiled (workers warm while the client plans), and each worker's own share.
            "startup_s": self.startup_s,
            "startup_workers": [asdict(w) for w in self.startup],
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "versions": versions(),
            "slides": _SLIDES,  # spliced in below: finished slides' entries are kept as text
            "failed": sum(s.status == "failed" for s in self.states),
            "tiles": self._tiles_done(),
            "score": asdict(sc) if (sc := run_score(self._scores())) else None,
        }
        head, tail = json_text(record).split(json.dumps(_SLIDES), 1)
        entries = [self._entry(s) for s in self.states]
        data = b"".join((head.encode("utf-8"),
                         b"[\n    " + b",\n    ".join(entries) + b"\n  ]" if entries else b"[]",
                         tail.encode("utf-8")))
        del entries
        self._stop_if_out_lost()  # never re-create a folder deleted under the run
        try:
            write_output(self.config.out_dir / RUN_JSON, data)
        except OSError as exc:
            self._stop_if_out_lost()
            raise WsiSegError(f"cannot write {RUN_JSON} ({exc.strerror or exc})",
                              self.config.out_dir) from None

    def _entry(self, state: SlideState) -> bytes:
        """The slide's ``run.json`` entry as its text there: kept once published, else made."""
        if state.published and state.kept is not None:
            return self._kept.entry(state.kept)
        return nested_json_text(state.record(), 2).encode("utf-8")

    def _figures(self, state: SlideState) -> dict[str, Any]:
        """What the summaries show of a slide, as ``report.json`` holds it: this run's report,
        else (a skipped slide) the finished one read at the start; empty when neither."""
        return self._kept.figures(state.kept) if state.kept is not None else {}

    def _scores(self) -> Iterator[OverlapScore | None]:
        """The scores of the slides this run published, in the run's order (read back only
        when some slide was scored)."""
        if not self._n_scored:
            return
        for s in self.states:
            if s.published and s.kept is not None:
                yield score_from_json(self._figures(s).get("score"))

    def _stop_if_out_lost(self) -> None:
        """Stop the run, in one line naming the folder and the cause, when ``OUT`` was
        deleted or made read-only under it: every slide would fail the same way, with a cause
        that names a temporary file. What was published before is kept (if ``OUT`` still
        is); the rest is left for a rerun, which resumes."""
        problem = out_dir_problem(self.config.out_dir, self.out_identity)
        if problem is None:
            return
        done = sum(s.status == "ok" for s in self.states)
        left = sum(s.status in ("pending", "running", "held") for s in self.states)
        kept = ("" if not done else f"the {done} slide(s) it finished went with it; "
                if problem == "was deleted" else f"the {done} slide(s) it finished are kept; ")
        raise RunStopped(f"output folder {problem} while the run was in flight: the run "
                          f"stops; {kept}rerun to do the {left} left", self.config.out_dir)

    # -- which slides to do --------------------------------------------------------------------
    def finished(self, state: SlideState) -> bool:
        """Whether the slide's outputs are complete for this very file (never when
        --overwrite); a folder holding another slide's outputs fails the slide in prepare.
        Asked of the slide's report once per run."""
        if state.done is None:
            state.done = self._check_finished(state)
        return state.done

    def _check_finished(self, state: SlideState) -> bool:
        if self.config.overwrite:
            return False
        stamp = _report_stamp(self.config.out_dir, state)
        if state.done is not None and stamp == state.report_stamp:
            return state.done  # asked again (under the lock): the report has not changed
        state.report_stamp = stamp
        try:
            report = finished_report(self.config.out_dir, state.path, state.name)
        except WsiSegError as exc:
            state.taken = exc  # the slide fails with it when prepared
            return False
        if report is None:
            return False
        # A slide that could not be scored before is redone (the truth may be fixed now).
        if self.config.truth is not None and report.get("score_error"):
            return False
        state.kept = self._kept.add(b"", {k: report.get(k) for k in SUMMARY_KEYS})
        return True

    def prepare(self) -> None:
        """Skip finished slides; prepare the others (a slide that cannot be fails alone);
        a slide another run holds waits (:meth:`_take_over_held`)."""
        for state in self.states:
            self._prepare_one(state)

    def _prepare_one(self, state: SlideState) -> bool:
        """Skip, hold or prepare one slide; whether it was prepared (has blocks to run)."""
        if self.finished(state):
            self._skip(state)
            return False
        # Asked before every slide (a stat and a probe file), not only when run.json is
        # rewritten (held to a share of the time): the lock and the work folder would make
        # OUT again, and the slide would run, and be published, in a folder the user deleted.
        self._stop_if_out_lost()
        try:
            lock = _try_lock(self.config.out_dir, state.name)
        except OSError as exc:  # OUT deleted between the look and the lock's own file
            self.fail(state, exc)  # stops the run first when OUT went
            return False
        if lock is None:
            if state.status != "held":
                self.say(f"~ {state.path.name}: {_holder(self.config.out_dir, state.name)} "
                         "is working on it; this run takes it over if that run stops")
            state.status = "held"
            return False
        state.lock = lock
        # Asked again under the lock (another run may just have published it); the report
        # is read again only if it changed since.
        state.done = self._check_finished(state)
        if state.done:
            self._skip(state)
            return False
        try:
            if state.taken is not None:
                raise state.taken
            state.job = prepare_slide(state.path, self.config, state.name)
        except Exception as exc:
            self.fail(state, exc)
            return False
        state.status = "pending"
        return True

    def _prepare_until_one_is_ready(self) -> list[SlideState]:
        """Prepare slides in order until one has blocks to run; the slides not looked at."""
        for i, state in enumerate(self.states):
            if self._prepare_one(state):
                return self.states[i + 1 :]
        return []

    def _skip(self, state: SlideState) -> None:
        state.unlock()
        state.status = "skipped"
        self.say(f"= {state.path.name}: already finished in "
                 f"{final_dir_for(self.config.out_dir, state.path, state.name)}")

    def fail(self, state: SlideState, exc: BaseException) -> None:
        # The folder's fault, not the slide's? Asked whatever the error: a slide whose work
        # folder went with OUT fails in a WsiSegError of its own (finish.check_work_dir).
        self._stop_if_out_lost()
        self._close_bar(state)
        state.unlock()
        state.status = "failed"
        state.error = one_line(exc)
        self.say(f"wsi-seg: error: {state.error}" if isinstance(exc, WsiSegError)
                 else f"wsi-seg: error: {state.path}: {state.error}", err=True)
        if not isinstance(exc, WsiSegError) and os.environ.get("WSI_SEG_DEBUG"):
            traceback.print_exception(exc)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Check the output folder and model, then run every unfinished slide (see the
        module docstring); writes run.json and the summaries."""
        try:
            return self._run()
        finally:
            self._kept.close()

    def _run(self) -> RunResult:
        # A bad model is the run's error, not every slide's: one line, before any worker starts
        # (and before the output folder is made).
        model = self.config.resolved_model()
        card = served_card(verify_model_file(model), self.config.infer, model)
        if self.config.infer.batch_size is not None:
            check_batch_bytes(self.config.infer.batch_size, card, model)
        check_writable(self.config.out_dir)
        self.out_identity = folder_identity(self.config.out_dir)
        if all(self.finished(s) for s in self.states):
            self.prepare()
            self.write_run_json(finished=True)
            return self.result()
        try:
            # Slides are prepared until one is ready before any worker starts, so a run whose
            # slides all fail to open ends without starting a cluster or loading a model.
            rest = self._prepare_until_one_is_ready()
            if not any(s.job or s.status == "held" for s in self.states):
                self.write_run_json(finished=True)
                return self.result()
            with connect(self.cluster) as (client, plan):
                share_storage(client, self.config.storage)
                infer = self._started(client, plan)
                # Workers import the framework and load the model while the client plans
                # the next slides (as many as the run would keep in flight).
                warm = warm_workers(client, self.config.resolved_model(), infer)
                todo = list(reversed(rest))  # popped from the end: the given order
                while todo and self._room(self._prepared()):
                    self._prepare_one(todo.pop())
                self.write_run_json()
                self._await_warm(warm)  # a model that failed fails every slide
                resources = self._resources(plan)
                self._check_resources(client, resources)
                self._stream(client, infer, resources, todo)
                self._take_over_held(client, infer, resources)
        finally:
            for state in self.states:
                state.unlock()
        self.write_run_json(finished=True)
        return self.result()

    def _take_over_held(self, client: Any, infer: InferConfig,
                        resources: dict[str, float] | None) -> None:
        """Wait for the slides other runs hold: each is done once its holder publishes it
        (then skipped here), or is taken over and run here once its holder stops without
        finishing it (killed: the lock died with it)."""
        waiting = [s for s in self.states if s.status == "held"]
        said = time.perf_counter()
        while waiting:
            ready = []
            for state in waiting:
                if self._prepare_one(state):
                    ready.append(state)
            if ready:
                self.write_run_json()
                self._stream(client, infer, resources, [])  # the slides just prepared
            waiting = [s for s in self.states if s.status == "held"]
            if waiting and not ready:
                if time.perf_counter() - said > HELD_NOTICE_S:
                    said = time.perf_counter()
                    self.say(f"~ waiting for {len(waiting)} slide(s) other runs hold")
                time.sleep(HELD_POLL_S)

    def _started(self, client: Any, plan: WorkerPlan | None) -> InferConfig:
        """Record and announce the cluster; the model's threads per worker from its plan."""
        self.worker_plan = plan
        self.dashboard = getattr(client, "dashboard_link", None)
        if plan is not None and self.dashboard:
            self.say(f"dask: {plan.workers} worker(s) x {plan.threads_per_worker} threads, "
                     f"dashboard {self.dashboard}")
        infer = self.config.infer
        if plan is not None and infer.threads is None:
            infer = replace(infer, threads=plan.tf_threads)
        return infer

    def _check_resources(self, client: Any, resources: dict[str, float] | None) -> None:
        """Blocks that ask for a resource no worker has would wait for ever: wait a while for
        such a worker to join, then fail in one line."""
        if not resources or self.cluster.scheduler == "threads":
            return
        deadline = time.perf_counter() + RESOURCE_WAIT_S
        said = False
        while True:
            workers = client.scheduler_info().get("workers", {}).values()
            if any(all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items())
                   for w in workers):
                return
            if time.perf_counter() > deadline:
                names = ", ".join(f"{k}={v:g}" for k, v in resources.items())
                raise WsiSegError(
                    f"no worker of the cluster declares the resource blocks ask for ({names}) "
                    f"after {RESOURCE_WAIT_S:g} s; start workers with --resources GPU=1 "
                    "(one per GPU), or run without --gpu-resource",
                    self.cluster.scheduler or "the local cluster")
            if not said:
                self.say(f"waiting up to {RESOURCE_WAIT_S:g} s for a worker with the GPU "
                         "resource (--gpu-resource)")
                said = True
            time.sleep(1.0)

    def _resources(self, plan: WorkerPlan | None) -> dict[str, float] | None:
        """Dask resources of a block task: a share of a GPU when blocks go to GPU workers."""
        use_gpu = self.gpu_resource if self.gpu_resource is not None else bool(
            plan and plan.gpus and self.cluster.scheduler != "threads")
        # A share of the card, not all of it: the resource routes blocks to GPU workers,
        # while many blocks per worker feed its one predictor.
        return {"GPU": BLOCK_GPU_SHARE} if use_gpu else None

    def _submit(self, flight: _InFlight, infer: InferConfig,
                resources: dict[str, float] | None, states: Sequence[SlideState]) -> None:
        """Submit each prepared slide's blocks (a slide with none left goes straight to
        finishing)."""
        client = flight.client
        for state in states:
            job = state.job
            if job is None:
                continue
            state.status = "running"
            state.started = time.perf_counter()
            state.remaining = len(job.tasks)
            ctx = job.context()
            # Dask runs what was submitted first first: a slide's largest blocks go first,
            # so the run ends on small ones and the device idles less at its tail.
            for task in sorted(job.tasks, key=lambda t: -t.block.n_windows):
                fut = client.submit(
                    run_block, ctx, task, infer, pure=False, resources=resources,
                    key=f"block-{job.stem}-{task.block.key}-{job.config_digest}", retries=1)
                flight.add(fut, state)
            if not job.tasks:
                self._submit_finish(flight, state)

    def _prepared(self) -> list[SlideState]:
        """Slides prepared and not yet submitted."""
        return [s for s in self.states if s.job is not None and s.status == "pending"]

    @staticmethod
    def _room(states: Sequence[SlideState], blocks: int = 0) -> bool:
        """Whether another slide may be prepared beside ``states`` (prepared or running) and
        ``blocks`` blocks in flight: always for the first."""
        return not states or (len(states) < MAX_SLIDES_IN_FLIGHT
                              and blocks + sum(len(s.job.tasks) for s in states if s.job
                                               and s.status == "pending")
                              < MAX_BLOCKS_IN_FLIGHT)

    def _stream(self, client: Any, infer: InferConfig, resources: dict[str, float] | None,
                todo: list[SlideState]) -> None:
        """Run the prepared slides, and the slides in ``todo`` (popped from its end), keeping
        at most :data:`MAX_SLIDES_IN_FLIGHT` slides and about :data:`MAX_BLOCKS_IN_FLIGHT`
        blocks in flight: the next slide is prepared and submitted as results come in, so
        the client's and the scheduler's memory stay flat in the number of slides. With
        ``todo`` empty, it runs just the slides prepared (the held ones taken over)."""
        from distributed import as_completed

        flight = _InFlight(client, as_completed())
        bar = progress.Progress(sum(s.job.tiles_todo for s in self._prepared() if s.job),
                                "all slides", enabled=not self.quiet)
        self._submit(flight, infer, resources, self._prepared())
        self._top_up(flight, infer, resources, todo, bar)
        while flight.owner:
            self._take(flight, next(flight.futures), bar)
            self._top_up(flight, infer, resources, todo, bar)
        for state in self.states:
            self._close_bar(state)
        bar.close()

    def _top_up(self, flight: _InFlight, infer: InferConfig,
                resources: dict[str, float] | None, todo: list[SlideState],
                bar: progress.Progress) -> None:
        """Prepare and submit slides from ``todo`` while there is room in flight."""
        while todo:
            running = list({id(s): s for s in flight.owner.values()}.values())
            if not self._room(running, len(flight.owner)):
                return
            state = todo.pop()
            if self._prepare_one(state) and state.job is not None:
                bar.add_total(state.job.tiles_todo)
                self._submit(flight, infer, resources, [state])
                self.write_run_json(throttled=True)

    def _take(self, flight: _InFlight, fut: Any, bar: progress.Progress) -> None:
        """One task's result: count a block, finish or fail its slide."""
        state = flight.owner.pop(fut)
        if state.status == "failed":
            return
        try:
            value = fut.result()
        except Exception as exc:
            self.fail(state, exc)
            flight.cancel(state)
            self.write_run_json(throttled=True)
            return
        if isinstance(value, BlockResult):
            state.results.append(value)
            state.remaining -= 1
            bar.update(value.n_tiles)
            self._slide_progress(state, value.n_tiles)
            if state.remaining == 0:
                self._submit_finish(flight, state)
        else:
            self._finished(state, value)

    def _slide_progress(self, state: SlideState, tiles: int) -> None:
        """A bar per slide under the overall one, from its first block until its last (on a
        terminal only: elsewhere the overall lines say enough)."""
        if self.quiet or state.job is None:
            return
        if state.bar is None:
            state.bar = progress.Progress(state.job.tiles_todo, printable(state.path.name),
                                          bar_only=True)
        state.bar.update(tiles)
        if state.remaining == 0:
            self._close_bar(state)

    @staticmethod
    def _close_bar(state: SlideState) -> None:
        if state.bar is not None:
            state.bar.close()
            state.bar = None

    def _await_warm(self, warm: Future[dict[str, Any]] | None) -> None:
        """Wait for the warm-up; a model that cannot load fails every slide with its cause.

        A worker lost while warming (killed, out of memory) is not an error here: the nanny
        restarts it and the model plugin loads the model there again.
        """
        if warm is None:
            return
        try:
            try:
                answers = warm.result()
            except (OSError, CommClosedError):
                # The broadcast lost a worker: the restarted one warms through the plugin,
                # and blocks wait for it there.
                self.say("start-up: a worker was lost while loading the model; it restarts")
                return
            errors = [a for a in answers.values() if isinstance(a, BaseException)]
            model_errors = [e for e in errors if not isinstance(e, OSError | CommClosedError)]
            if model_errors:
                raise model_errors[0]
            if errors:
                self.say("start-up: a worker was lost while loading the model; it restarts")
            self.startup = [a for a in answers.values() if not isinstance(a, BaseException)]
            self.startup_s = round(time.perf_counter() - self.t0, 3)
            self._say_startup()
        except Exception as exc:
            for state in self.states:
                if state.job is not None:
                    state.job = None
                    self.fail(state, exc)

    def _say_startup(self) -> None:
        if self.startup and not self.quiet:
            slowest = max(w.load_s for w in self.startup)
            devices = sorted({f"{w.backend} on {w.device}, {w.precision}"
                              for w in self.startup})
            self.say(f"start-up: {len(self.startup)} worker(s) ready in "
                     f"{self.startup_s:.1f} s (model load + compile {slowest:.1f} s; "
                     f"{', '.join(devices)})")

    def _submit_finish(self, flight: _InFlight, state: SlideState) -> None:
        job = state.job
        assert job is not None and state.started is not None
        # Never publish into OUT deleted (and made again by a write in flight) under the run:
        # the worker's own check (finish.check_work_dir) passes in a folder made again before
        # the slide was prepared.
        self._stop_if_out_lost()
        wall = time.perf_counter() - state.started
        fut = flight.client.submit(finish_slide, job, self.config, sum_times(state.results),
                                   wall, pure=False, key=f"finish-{job.stem}-{job.config_digest}")
        flight.add(fut, state)

    def _finished(self, state: SlideState, report: SlideReport) -> None:
        state.unlock()  # published: the next run that asks finds it finished
        if state.job is not None:  # keep its figures, let the rest go: memory flat per slide
            state.counts, state.job = JobCounts.of(state.job), None
        state.results = []
        state.status = "ok"
        state.published = True
        slide_dir = final_dir_for(self.config.out_dir, state.path, state.name)
        if report.score_error:
            # Outputs are published, but the score the user asked for is not there: that is
            # a failure of the run, said on stderr and in run.json.
            state.status = "failed"
            state.error = f"{state.path}: cannot score: {report.score_error}"
            self.say(f"wsi-seg: error: {state.error}", err=True)
        # Its run.json entry and summary figures are kept as text, the report let go.
        data = report.to_json()
        state.kept = self._kept.add(
            nested_json_text(state.record(report, slide_dir), 2).encode("utf-8"),
            {k: data.get(k) for k in SUMMARY_KEYS})
        self._n_scored += report.score is not None
        self.say(_done_line(state.path, report, slide_dir,
                            mark="✗" if report.score_error else "✓") + self._cohort_text())
        if report.classes:
            self.say(f"  classes: {_classes_text(report)}")
        for note in report.notes:
            self.say(f"  note: {note}")
        self.write_run_json(throttled=True)

    def _cohort_text(self) -> str:
        """`` [3/10 slides, about 2 min left]``: where the run stands over all its slides, for a
        line per slide that reads well in a SLURM log. The time left is this run's time per
        slide done so far (skipped slides aside) times the slides left."""
        if len(self.states) < 2:
            return ""
        done = sum(s.status in ("ok", "failed", "skipped") for s in self.states)
        ran = sum(s.status in ("ok", "failed") for s in self.states)
        left = len(self.states) - done
        eta = (f", about {progress.duration((time.perf_counter() - self.t0) / ran * left)} left"
               if ran and left else "")
        return f" [{done}/{len(self.states)} slides{eta}]"

    def _tiles_done(self) -> int:
        """Tiles of the slides this run predicted and published (a slide whose score failed
        was predicted and published too)."""
        return sum(c.n_tiles for s in self.states
                   if s.published and (c := s.job_counts()) is not None)

    def result(self) -> RunResult:
        self._write_summaries()
        tiles = self._tiles_done()
        return RunResult(tuple(s.result(self.config.out_dir) for s in self.states),
                         time.perf_counter() - self.t0, tiles,
                         sum(s.status == "failed" for s in self.states))

    def _write_summaries(self) -> None:
        from wsi_seg.evaluation.overlay import (
            CLASS_SUMMARY,
            ClassRow,
            SummaryRow,
            write_class_summary_csv,
            write_summary_csv,
            write_summary_md,
        )

        rows, class_rows = [], []
        for s in self.states:
            status = s.status if s.status != "failed" else f"failed: {s.error}"
            name = s.path.name if s.name == slide_stem(s.path) else s.name
            fig = self._figures(s)
            rows.append(SummaryRow(
                slide=name, tissue_mm2=fig.get("tissue_mm2"), tumour_mm2=fig.get("tumour_mm2"),
                iou=(fig.get("score") or {}).get("iou"),
                dice=(fig.get("score") or {}).get("dice"),
                tiles_per_s=fig.get("tiles_per_s"), status=status))
            class_rows += [ClassRow(name, c["name"], c["area_mm2"], c["regions"],
                                    (c.get("score") or {}).get("iou"),
                                    (c.get("score") or {}).get("dice"))
                           for c in fig.get("classes") or ()]
        footer = run_score_lines(self._scores())
        write_summary_csv(rows, self.config.out_dir / "summary.csv")
        write_summary_md(rows, self.config.out_dir / "summary.md", footer=footer,
                         classes=class_rows)
        class_csv = self.config.out_dir / CLASS_SUMMARY
        if class_rows:
            write_class_summary_csv(class_rows, class_csv)
        elif isinstance(class_csv, SlideURL):
            from wsi_seg.stages.result_store import delete

            delete(class_csv)
        else:  # an earlier run's table would no longer match summary.md
            class_csv.unlink(missing_ok=True)


def _try_lock(out_dir: OutputLocation, name: str) -> SlideLock | StoreLease | None:
    """This run's hold on a slide's outputs: the file lock, or in a store the lease."""
    if isinstance(out_dir, SlideURL):
        from wsi_seg.stages.result_store import try_lease

        return try_lease(out_dir, name)
    return try_lock(out_dir, name)


def _holder(out_dir: OutputLocation, name: str) -> str:
    """Who holds a slide (:func:`wsi_seg.core.locks.holder`, or the lease's holder)."""
    if isinstance(out_dir, SlideURL):
        from wsi_seg.stages.result_store import lease_holder

        return lease_holder(out_dir, name)
    return holder(out_dir, name)


def _output_there(final: OutputLocation) -> bool:
    """Whether a slide's output folder is there (in a store: its completion marker)."""
    if isinstance(final, SlideURL):
        from wsi_seg.stages.result_store import exists

        return exists(final / REPORT)
    return final.is_dir()


def _report_stamp(out_dir: OutputLocation, state: SlideState
                  ) -> tuple[int | str, int] | None:
    report = final_dir_for(out_dir, state.path, state.name) / REPORT
    if isinstance(report, SlideURL):
        from wsi_seg.stages.result_store import stamp

        return stamp(report)
    try:
        st = report.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _classes_text(report: SlideReport) -> str:
    """``Stroma 1.234 mm² (IoU 0.981), Necrosis 0.100 mm²``: a multi-class slide's classes."""
    parts = []
    for c in report.classes:
        iou = c.score.iou if c.score is not None else None
        parts.append(f"{c.name} {c.area_mm2:.3f} mm²" + (f" (IoU {iou:.3f})"
                                                          if iou is not None else ""))
    return ", ".join(parts)


def _done_line(path: SlideLocation, report: SlideReport, slide_dir: OutputLocation,
               mark: str = "✓") -> str:
    """``✓ NAME: tiles in s (tiles/s; blocks phase ...), tumour mm², IoU, Dice -> DIR``; ``✗``
    when the outputs are there but the score asked for is not."""
    score, polys = report.score, report.polygons_score
    extra = (f", IoU {score.iou:.3f}, Dice {score.dice:.3f}"
             if score is not None and score.iou is not None and score.dice is not None else "")
    if extra and polys is not None and polys.iou is not None and polys != score:
        extra += f" (polygons IoU {polys.iou:.3f})"  # what tumor.geojson scores
    blocks = (f"; blocks phase {report.blocks_wall_s:.1f} s, "
              f"{report.blocks_tiles_per_s or 0.0:.1f} tiles/s")
    return (f"{mark} {path.name}: {report.tiles} tiles in {report.wall_s:.1f} s "
            f"({report.tiles_per_s or 0.0:.1f} tiles/s{blocks}), tumour "
            f"{report.tumour_mm2:.3f} mm²{extra} -> {slide_dir}")


def run_slides(slides: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
               config: RunConfig, cluster: ClusterConfig | None = None, quiet: bool = True,
               gpu_resource: bool | None = None,
               slide_list: str | os.PathLike[str] | None = None) -> RunResult:
    """Process slides into ``config.out_dir``; see the module docstring.

    ``slides`` is a slide file or folder, or a list of them (folders are searched for slides,
    not recursively); ``slide_list`` a file naming more, one per line
    (:func:`~wsi_seg.stages.slide_files.read_slide_list`). Each slide gets ``OUT/NAME/``
    (``mask.zarr``, ``tumor.geojson``, ``overlay.png``, ``report.json``), published only when
    complete; the run writes ``run.json`` and ``summary.csv``/``summary.md``. A slide that fails
    is reported in its :class:`SlideResult` and the others go on. ``cluster`` says where blocks
    run (default: local worker processes, one per GPU); ``quiet`` (the default here) silences
    the progress lines. Raises WsiSegError (one line) only for what stops the whole run: no
    slides, a model that cannot serve the configuration, an output folder that cannot be
    written.

    The README's "Python" section shows it at work (a test runs that example).
    """
    from wsi_seg.orchestration.job import check_model_fit
    from wsi_seg.stages.object_store import check_stores, use_storage
    from wsi_seg.stages.slide import find_slides
    from wsi_seg.stages.slide_files import read_slide_list

    paths = [slides] if isinstance(slides, str | os.PathLike) else list(slides)
    check_model_fit(config)
    listed = read_slide_list(slide_list) if slide_list is not None else []
    if not paths and not listed:
        raise WsiSegError("no slides given: name slide files or folders, or --slides LIST")
    # config.storage reaches every s3:// URL of the run: here (listing, opening, tissue,
    # results) and on the workers (cluster.share_storage).
    with use_storage(config.storage):
        check_stores(p for p in listed if isinstance(p, SlideURL))
        found = find_slides(paths) if paths else []
        given = {str(p) for p in found}
        found += [p for p in listed if str(p) not in given]
        return Runner(found, config, cluster or ClusterConfig(), quiet, gpu_resource).run()
