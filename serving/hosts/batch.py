"""Batch transform: the pipeline over a directory of files, as a SageMaker Batch Transform
job runs a container over an S3 prefix, with no HTTP.

``serve batch INPUT_DIR OUTPUT_DIR`` (or ``python -m serving.hosts.batch``) reads every file under
INPUT_DIR, cuts it into records (``--split-type``), packs the records into requests
(``--batch-strategy``, at most ``--max-payload-mb`` each), answers each request with the
model's pipeline, and writes ``OUTPUT_DIR/<relative path>.out``: the answers one after
another (``--assemble-with None``) or each followed by a newline (``Line``), in order.

- A file whose request fails (a 4xx or 5xx, as the server would answer it) gets no ``.out``:
  the failure is reported with its file, and the others go on. The exit status is 1 when
  any file failed.
- Locally it runs in this process, loading the model once. With ``--ray`` the files are
  shared out across a Ray cluster with Ray Data: ``map_batches`` with a callable class,
  so each actor loads the model once, and writes the outputs of the files it was given
  (OUTPUT_DIR must be reachable from every node: a shared file system).

The model's settings are ``serve``'s (``--model-dir``, ``SAGEMAKER_PROGRAM``, …).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing as t

from serving.config import Config, ConfigError, cpu_count

__all__ = ["FileResult", "Transform", "main", "transform_local", "transform_ray"]

SPLIT_TYPES = ("None", "Line", "RecordIO")
BATCH_STRATEGIES = ("SingleRecord", "MultiRecord")
ASSEMBLE_WITH = ("None", "Line")
OUTPUT_SUFFIX = ".out"


@dataclasses.dataclass(frozen=True)
class Transform:
    """How a job cuts, packs and assembles: the CreateTransformJob parameters."""

    split_type: str = "None"
    batch_strategy: str = "MultiRecord"
    max_payload_bytes: int = 6 * 2**20
    assemble_with: str = "None"
    content_type: str = "application/json"
    accept: str | None = None


@dataclasses.dataclass(frozen=True)
class FileResult:
    """What became of one input file."""

    path: str  # relative to the input directory
    records: int
    requests: int
    #: None when the file was transformed; else the status and message of what failed.
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Failed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def records_of(data: bytes, split_type: str) -> list[bytes]:
    """The records of a file: itself (``None``), its non-empty lines without their line
    breaks (``Line``), or its RecordIO records, each framed again as a RecordIO record of
    its own (``RecordIO``: a request is RecordIO, as the job sends it)."""
    if split_type == "None":
        return [data] if data else []
    if split_type == "Line":
        return [line.rstrip(b"\r") for line in data.split(b"\n") if line.strip()]
    from handlers.content import DecodeError
    from handlers.content.recordio import read_recordio, write_recordio

    try:
        return [write_recordio([payload]) for payload in read_recordio(data)]
    except DecodeError as exc:
        raise _Failed(400, f"not RecordIO: {exc}") from None


def requests_of(records: list[bytes], transform: Transform) -> list[bytes]:
    """The request bodies: one record each (``SingleRecord``), or as many records as fit
    in ``max_payload_bytes`` (``MultiRecord``; lines joined by line breaks)."""
    limit = transform.max_payload_bytes
    for number, record in enumerate(records):
        if len(record) > limit:
            raise _Failed(413, f"record {number} is {len(record)} bytes, over the "
                               f"{limit}-byte MaxPayloadInMB")
    if transform.batch_strategy == "SingleRecord":
        return records
    joiner = b"\n" if transform.split_type == "Line" else b""
    bodies: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for record in records:
        extra = len(record) + (len(joiner) if current else 0)
        if current and size + extra > limit:
            bodies.append(joiner.join(current))
            current, size = [], 0
            extra = len(record)
        current.append(record)
        size += extra
    if current:
        bodies.append(joiner.join(current))
    return bodies


class FileTransformer:
    """The pipeline, loaded once, turning input files into ``.out`` files. Ray Data makes
    one per actor (``map_batches`` with a callable class); locally there is one."""

    def __init__(self, config: Config, transform: Transform, input_dir: str,
                 output_dir: str, threads: int | None = None) -> None:
        from serving.assembly.build import assemble_loaded
        from serving.contract.invocation import Invocations
        from serving.contract.limits import Limits
        from serving.runtime.executor import Inline

        self.transform = transform
        self.input_dir, self.output_dir = input_dir, output_dir
        models = assemble_loaded(config, threads or cpu_count())
        self.pipeline = models.default
        # The records run one after another in this thread: no client waits past a deadline.
        self.invocations = Invocations(models, Inline(config.deadline_seconds),
                                       Limits.from_config(config),
                                       default_accept=config.default_accept)

    def __call__(self, batch: dict[str, t.Any]) -> dict[str, list[t.Any]]:
        """Ray Data's call: a batch of rows ``{"path": [...]}``; one result row per path."""
        results = [self.transform_file(path) for path in batch["path"]]
        return {field.name: [getattr(r, field.name) for r in results]
                for field in dataclasses.fields(FileResult)}

    def transform_file(self, path: str) -> FileResult:
        """Transform ``input_dir/path`` into ``output_dir/path.out`` (written whole, or not
        at all)."""
        from serving import errors
        from serving.contract.invocation import Invocation

        records = requests = 0
        try:
            full_path = os.path.join(self.input_dir, path)
            size = os.path.getsize(full_path)
            if self.transform.split_type == "None" and size > self.transform.max_payload_bytes:
                # One request of the whole file: refused before it is read.
                raise _Failed(413, f"the file is {size} bytes, over the "
                                   f"{self.transform.max_payload_bytes}-byte MaxPayloadInMB")
            with open(full_path, "rb") as f:
                data = f.read()
            chunks = records_of(data, self.transform.split_type)
            records = len(chunks)
            bodies = requests_of(chunks, self.transform)
            requests = len(bodies)
            invocations, pipeline = self.invocations, self.pipeline
            negotiated = invocations.negotiate(pipeline, self.transform.content_type,
                                               self.transform.accept)
            headers = {"Content-Type": self.transform.content_type}
            out = bytearray()
            for body in bodies:
                answer = invocations.invoke(pipeline, Invocation(
                    body, negotiated.content_type, None, headers), negotiated)
                out += invocations.whole(answer, "")
                if self.transform.assemble_with == "Line":
                    out += b"\n"
        except _Failed as exc:
            return FileResult(path, records, requests, exc.status, exc.message)
        except errors.ServingError as exc:
            return FileResult(path, records, requests, exc.status_code, exc.message)
        except OSError as exc:
            return FileResult(path, records, requests, 500, f"cannot read it: {exc}")
        except Exception as exc:  # the model failed on it: the job goes on with the others
            return FileResult(path, records, requests, 500,
                              f"the model raised {type(exc).__name__}: {exc}")
        target = os.path.join(self.output_dir, path + OUTPUT_SUFFIX)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        partial = target + ".partial"
        with open(partial, "wb") as f:
            f.write(out)
        os.replace(partial, target)
        return FileResult(path, records, requests)


def input_files(input_dir: str) -> list[str]:
    """Every file under ``input_dir``, relative to it, sorted (hidden files left out, as
    the ``.partial`` and checkpoint files tools leave)."""
    found = []
    for root, dirs, files in os.walk(input_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith("."):
                found.append(os.path.relpath(os.path.join(root, name), input_dir))
    return sorted(found)


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, else a line every tenth."""

    def __init__(self, total: int, stream: t.TextIO = sys.stderr) -> None:
        self.total, self.stream = total, stream
        self.done = self.failed = self.records = 0
        self.started = time.monotonic()
        self._tty = stream.isatty()
        self._next_line = 0

    def update(self, result: FileResult) -> None:
        self.done += 1
        self.records += result.records
        if not result.ok:
            self.failed += 1
            self._write(f"FAILED {result.path}: {result.status} {result.error}\n")
        if self._tty or self.done >= self._next_line or self.done == self.total:
            self._next_line = self.done + max(1, self.total // 10)
            self._draw()

    def _draw(self) -> None:
        width = 30
        filled = width * self.done // max(1, self.total)
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} files, "
                f"{self.records} records, {self.failed} failed, "
                f"{time.monotonic() - self.started:.1f} s")
        self._write(f"\r{line}" if self._tty else f"{line}\n")

    def _write(self, text: str) -> None:
        if self._tty and text.startswith("FAILED"):
            text = "\r\x1b[K" + text
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")


def transform_local(config: Config, transform: Transform, input_dir: str, output_dir: str,
                    progress: Progress | None = None) -> list[FileResult]:
    """The job in this process, one file after another."""
    paths = input_files(input_dir)
    transformer = FileTransformer(config, transform, input_dir, output_dir)
    results = []
    for path in paths:
        result = transformer.transform_file(path)
        results.append(result)
        if progress is not None:
            progress.update(result)
    return results


def transform_ray(config: Config, transform: Transform, input_dir: str, output_dir: str,
                  actors: int, progress: Progress | None = None) -> list[FileResult]:
    """The job on Ray Data: the files shared out across ``actors`` actors, each holding
    the model once. Joins the cluster at ``config.ray_address``, else starts a local Ray
    instance, and stops what it started."""
    import ray

    paths = input_files(input_dir)
    if not paths:
        return []
    local = config.ray_address is None
    ray.init(address=config.ray_address or "local", include_dashboard=False,
             configure_logging=False, log_to_driver=False,
             **({"object_store_memory": 256 * 2**20} if local else {}))
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts files and records
        dataset = ray.data.from_items([{"path": p} for p in paths],
                                      override_num_blocks=min(len(paths), actors * 4))
        results_by_path: dict[str, FileResult] = {}
        mapped = dataset.map_batches(
            FileTransformer, batch_size=1, concurrency=actors,
            num_cpus=config.ray_num_cpus, num_gpus=config.ray_num_gpus or None,
            fn_constructor_kwargs={"config": config, "transform": transform,
                                   "input_dir": os.path.abspath(input_dir),
                                   "output_dir": os.path.abspath(output_dir),
                                   "threads": max(1, int(config.ray_num_cpus))},
        )
        for row in mapped.iter_rows():
            result = FileResult(**{field.name: _plain(row[field.name])
                                   for field in dataclasses.fields(FileResult)})
            results_by_path[result.path] = result
            if progress is not None:
                progress.update(result)
        return [results_by_path[p] for p in paths]
    finally:
        ray.shutdown()


def _plain(value: t.Any) -> t.Any:
    """A value as Ray Data hands it back (NumPy scalars, NaN for a missing number) as
    Python's."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serve batch",
        description="Run the model over every file in INPUT_DIR, like a SageMaker Batch "
        "Transform job, writing OUTPUT_DIR/<file>.out. Other options are serve's (serve "
        "--help): the model directory, its script, its framework.")
    parser.add_argument("input_dir", metavar="INPUT_DIR")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR")
    parser.add_argument("--split-type", choices=SPLIT_TYPES, default="None",
                        help="How a file is cut into records (SplitType). Default: None.")
    parser.add_argument("--batch-strategy", choices=BATCH_STRATEGIES, default="MultiRecord",
                        help="One record per request, or as many as fit in --max-payload-mb "
                        "(BatchStrategy). Default: MultiRecord.")
    parser.add_argument("--assemble-with", choices=ASSEMBLE_WITH, default="None",
                        help="Answers one after another, or each followed by a line break "
                        "(AssembleWith). Default: None.")
    parser.add_argument("--content-type", default="application/json",
                        help="The requests' Content-Type (ContentType). Default: "
                        "application/json.")
    parser.add_argument("--accept", default=None,
                        help="The answers' type (Accept). Default: the server's default.")
    parser.add_argument("--ray", action="store_true",
                        help="Share the files out across a Ray cluster with Ray Data "
                        "(RAY_ADDRESS, else a local Ray instance).")
    parser.add_argument("--ray-actors", type=int, default=2, metavar="N",
                        help="With --ray: actors, each holding the model. Default: 2.")
    return parser


def main(argv: t.Sequence[str] | None = None) -> int:
    """``serve batch``: the exit status (0: every file transformed; 1: some failed; 2: bad
    settings)."""
    from serving.runtime import logs

    args, rest = build_parser().parse_known_args(argv)
    try:
        # MaxPayloadInMB is serve's --max-payload-mb (SAGEMAKER_MAX_PAYLOAD_IN_MB).
        config = Config.load(rest)
    except ConfigError as exc:
        print(f"serve batch: error: {exc}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.input_dir):
        print(f"serve batch: error: {args.input_dir} is not a directory", file=sys.stderr)
        return 2
    if args.ray_actors < 1:
        print("serve batch: error: --ray-actors must be 1 or more", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    transform = Transform(split_type=args.split_type, batch_strategy=args.batch_strategy,
                          max_payload_bytes=config.max_payload_bytes,
                          assemble_with=args.assemble_with, content_type=args.content_type,
                          accept=args.accept)
    os.makedirs(args.output_dir, exist_ok=True)
    progress = Progress(len(input_files(args.input_dir)))
    try:
        if args.ray:
            results = transform_ray(config, transform, args.input_dir, args.output_dir,
                                    args.ray_actors, progress)
        else:
            results = transform_local(config, transform, args.input_dir, args.output_dir,
                                      progress)
    finally:
        progress.close()
    failed = [r for r in results if not r.ok]
    summary = {"files": len(results), "failed": len(failed),
               "records": sum(r.records for r in results),
               "requests": sum(r.requests for r in results),
               "failures": [{"file": r.path, "status": r.status, "error": r.error}
                            for r in failed]}
    print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
