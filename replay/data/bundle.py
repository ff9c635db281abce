"""Job bundles: everything a job's on-chain roots commit to, as content-addressed blobs
(docs/protocol.md §5.4).

A bundle is named by one hash, the sha256 of its manifest blob, which the job binds
(``JobSpec.bundle``). From the manifest every other part is reached by address and checked
against a root the chain holds:

- **program**: the Program JSON (slot table + ops); every op must be exactly what its
  128-byte descriptor encodes, and the descriptors' MTH must be ``program_root``;
- **initial state** ``C_0``: a checkpoint (manifest + safetensors) whose state root is
  ``initial_root``;
- **dataset**: an *index* blob (per page: its blob address and its root) whose RFC 9162 tree
  over the page roots is ``dataset_root`` — pages are aligned blocks of ``page_steps`` (a power
  of two) leaves, so they are exactly subtrees of the dataset tree; a *page* blob lists, per
  step, the leaf ``tensor_root(x) || tensor_root(y)`` and the address of the step's *batch*
  blob (``x`` then ``y``, float32 little-endian, C order). A reader fetches only the pages and
  batches of the steps it replays;
- **metadata**: human-readable JSON (name, description, licences, the data's provenance, the
  model source files and config it was compiled from). Never executed, only hashed.

Nothing in a bundle is ever executed or unpickled; every blob is re-hashed on arrival, has a
size limit, and its contents are checked before use. Any failure raises :class:`BundleError`
naming the part.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol.blobs import BlobError, BlobStore, FileStore, address_of
from protocol.commitments import tensor_root
from protocol.errors import TrainproofError
from protocol.game import JobSpec
from protocol.ir import (
    BATCH_X,
    BATCH_Y,
    Opcode,
    Program,
    ProgramError,
    decode_descriptor,
    numel,
    validate_program,
)
from protocol.merkle import MerkleTree, merkle_root, root_of_leaf_hashes
from replay.data.checkpoint import CheckpointError, Hex32, from_hex, load_checkpoint, to_hex
from replay.data.checkpoint import save_checkpoint as _save_checkpoint

BUNDLE_FORMAT = "trainproof-bundle/v1"
METADATA_FORMAT = "trainproof-bundle-metadata/v1"
BUNDLE_DIR_FORMAT = "trainproof-bundle-dir/v1"
#: Steps per dataset page (a power of two, so that a page is a subtree of the dataset tree).
PAGE_STEPS = 1024
#: A page entry: the step's leaf (x root || y root) and its batch blob's address.
PAGE_ENTRY_BYTES = 96
#: An index entry: a page's blob address and its root.
INDEX_ENTRY_BYTES = 64

# Size limits a reader enforces before parsing anything (the manifest states the sizes of the
# blobs it names; a blob of another size is refused).
MAX_MANIFEST_BYTES = 1 << 20
MAX_PROGRAM_BYTES = 256 << 20
MAX_METADATA_BYTES = 4 << 20
MAX_SOURCE_BYTES = 4 << 20
MAX_SOURCES = 256
MAX_BATCH_BYTES = 256 << 20
MAX_PAGE_STEPS = 1 << 16
MAX_STEPS = 1 << 40

Hex64 = Field(pattern=r"^[0-9a-f]{64}$")


class BundleError(TrainproofError):
    """A bundle part is missing, too large, malformed, or does not match what binds it."""

    def __init__(self, part: str, why: str) -> None:
        super().__init__(f"bundle {part}: {why}")
        self.part = part
        self.why = why


class BlobRef(BaseModel):
    """A blob by address (sha256, hex) and exact size in bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str = Hex64
    size: int = Field(ge=0)


class InitialRef(BaseModel):
    """C_0 as a checkpoint: its manifest and safetensors blobs, and its state root."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    manifest: BlobRef
    tensors: BlobRef
    state_root: Hex32


class DatasetRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(gt=0, le=MAX_STEPS)
    page_steps: int = Field(gt=0, le=MAX_PAGE_STEPS)
    root: Hex32
    x_shape: tuple[int, ...] = Field(max_length=4)
    y_shape: tuple[int, ...] = Field(max_length=4)
    index: BlobRef

    @field_validator("page_steps")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"page_steps {v} is not a power of two")
        return v

    @field_validator("x_shape", "y_shape")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(d <= 0 for d in v):
            raise ValueError(f"shape {list(v)} has a dimension below 1")
        return v

    @property
    def pages(self) -> int:
        return -(-self.steps // self.page_steps)

    @property
    def batch_bytes(self) -> int:
        return 4 * (numel(self.x_shape) + numel(self.y_shape))

    def page_size(self, page: int) -> int:
        """Steps in page ``page`` (the last one may be short)."""
        return min(self.page_steps, self.steps - page * self.page_steps)


class BundleManifest(BaseModel):
    """The bundle's root blob; its sha256 is the bundle's name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["trainproof-bundle/v1"] = BUNDLE_FORMAT
    name: str = Field(min_length=1, max_length=200)
    program: BlobRef
    program_root: Hex32
    program_len: int = Field(gt=0)
    slots: int = Field(gt=0)
    initial: InitialRef
    dataset: DatasetRef
    metadata: BlobRef


class SourceFile(BaseModel):
    """A file of the model's source, by relative path (shown, never executed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(min_length=1, max_length=255)
    blob: BlobRef

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        p = PurePosixPath(v)
        if p.is_absolute() or ".." in p.parts or "\\" in v:
            raise ValueError(f"source path {v!r} must be relative, inside the bundle")
        return v


class DataInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field("", max_length=2000, description="what the data is, where it came from")
    licence: str = Field("", max_length=200)
    spec: dict[str, Any] = Field(default_factory=dict, description="how it was batched")


class BundleMetadata(BaseModel):
    """Human-readable facts about a job (hashed into the bundle, never executed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["trainproof-bundle-metadata/v1"] = METADATA_FORMAT
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=20_000)
    licence: str = Field("", max_length=200, description="the model's and the job's licence")
    data: DataInfo = Field(default_factory=DataInfo)
    config: dict[str, Any] = Field(default_factory=dict, description="model and optimizer config")
    sources: tuple[SourceFile, ...] = Field(default=(), max_length=MAX_SOURCES)
    job: dict[str, Any] = Field(
        default_factory=dict, description="the compiled job's manifest (state-dict layout, shapes)"
    )


class BundleDir(BaseModel):
    """``DIR/bundle.json`` of a bundle folder: a blob store folder plus the bundle's name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["trainproof-bundle-dir/v1"] = BUNDLE_DIR_FORMAT
    bundle: str = Hex64
    name: str


# ---------------------------------------------------------------- fetching


def fetch_part(store: BlobStore, ref: BlobRef, part: str, limit: int) -> bytes:
    """Blob ``ref`` (re-hashed by the store), refused when its stated size is over ``limit``
    or its actual size is not the stated one."""
    if ref.size > limit:
        raise BundleError(part, f"{ref.size} bytes, over the {limit}-byte limit")
    try:
        data = store.get(ref.address, max_bytes=ref.size)
    except BlobError as e:
        raise BundleError(part, str(e)) from None
    if len(data) != ref.size:
        raise BundleError(part, f"{len(data)} bytes where the manifest says {ref.size}")
    return data


def _parse(model: type[BaseModel], data: bytes, part: str) -> Any:
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "top level"
        raise BundleError(part, f"malformed: {err['msg']} at {where}") from None


def batch_shapes(program: Program) -> dict[int, tuple[int, ...]]:
    """The shape each LOAD_BATCH half (0 = x, 1 = y) of ``program`` reads."""
    return {op.imm: op.shape for op in program.ops if op.opcode == Opcode.LOAD_BATCH}


def check_program(data: bytes, part: str = "program") -> Program:
    """A Program from untrusted JSON: it parses, every op is exactly what its descriptor
    encodes (nothing executes that the program root does not commit to), and it is valid."""
    program: Program = _parse(Program, data, part)
    for j, op in enumerate(program.ops):
        try:
            same = decode_descriptor(op.encode(), j) == op
        except (ProgramError, ValueError) as e:
            raise BundleError(part, f"op {j} does not encode: {e}") from None
        if not same:
            raise BundleError(part, f"op {j} carries fields its descriptor does not commit to")
    try:
        validate_program(program)
    except ProgramError as e:
        raise BundleError(part, f"invalid: {e}") from None
    return program


def load_initial(store: BlobStore, ref: InitialRef, program: Program) -> dict[str, np.ndarray]:
    """C_0 from its two blobs, with every checkpoint check, at the stated state root."""
    persistent = sum(4 * program.slots[i].numel for i in program.persistent_slots)
    manifest = fetch_part(store, ref.manifest, "initial state manifest", 1 << 22)
    tensors = fetch_part(store, ref.tensors, "initial state tensors", persistent + (1 << 20))
    try:
        with tempfile.TemporaryDirectory(prefix="trainproof-bundle-") as tmp:
            folder = Path(tmp)
            (folder / "c0.json").write_bytes(manifest)
            name = json.loads(manifest).get("file", "")
            if (
                not isinstance(name, str)
                or Path(name).name != name
                or not name.endswith(".safetensors")
            ):
                raise CheckpointError(f"its manifest names {name!r}, not a .safetensors file")
            (folder / name).write_bytes(tensors)
            _, state = load_checkpoint(folder / "c0.json", program, from_hex(ref.state_root))
    except (CheckpointError, ValueError) as e:
        raise BundleError("initial state", str(e)) from None
    return state


@dataclass
class Page:
    leaves: list[bytes]
    batches: list[str]
    tree: MerkleTree


class BundleDataset:
    """The dataset of a bundle, fetched lazily: a page when one of its steps is first asked
    for, a batch when its step is. Offers ``batch(t)``, ``leaf(t)``, ``root(steps)`` and
    ``proof(t)`` (the dataset inclusion path a LOAD_BATCH opening needs), like the local
    datasets; ``fetched_bytes`` counts what it fetched."""

    def __init__(
        self,
        store: BlobStore,
        ref: DatasetRef,
        page_addresses: list[str],
        page_roots: list[bytes],
        cache_pages: int = 4,
        cache_batches: int = 64,
    ) -> None:
        self.store = store
        self.ref = ref
        self.steps = ref.steps
        self._addresses = page_addresses
        self._roots = page_roots
        self._upper = MerkleTree(page_roots)
        self._pages: OrderedDict[int, Page] = OrderedDict()
        self._batches: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache = (cache_pages, cache_batches)
        self.fetched_bytes = 0

    def page_address(self, p: int) -> str:
        return self._addresses[p]

    @property
    def root_bytes(self) -> bytes:
        return from_hex(self.ref.root)

    def _check_step(self, t: int) -> None:
        if not 0 <= t < self.steps:
            raise BundleError("dataset", f"step {t} is outside the dataset's {self.steps} steps")

    def page(self, p: int) -> Page:
        if p in self._pages:
            self._pages.move_to_end(p)
            return self._pages[p]
        n = self.ref.page_size(p)
        part = f"dataset page {p}"
        data = fetch_part(
            self.store, BlobRef(address=self._addresses[p], size=n * PAGE_ENTRY_BYTES), part,
            MAX_PAGE_STEPS * PAGE_ENTRY_BYTES,
        )  # fmt: skip
        self.fetched_bytes += len(data)
        leaves = [data[i * 96 : i * 96 + 64] for i in range(n)]
        batches = [data[i * 96 + 64 : i * 96 + 96].hex() for i in range(n)]
        tree = MerkleTree.from_leaves(leaves)
        if tree.root != self._roots[p]:
            raise BundleError(part, "its leaves do not hash to the index's page root")
        page = Page(leaves, batches, tree)
        self._pages[p] = page
        if len(self._pages) > self._cache[0]:
            self._pages.popitem(last=False)
        return page

    def leaf(self, t: int) -> bytes:
        self._check_step(t)
        p, i = divmod(t, self.ref.page_steps)
        return self.page(p).leaves[i]

    def proof(self, t: int) -> list[bytes]:
        """The RFC 9162 audit path of leaf ``t`` in the dataset tree: the path inside its page,
        then the page's path among the page roots."""
        self._check_step(t)
        p, i = divmod(t, self.ref.page_steps)
        return [*self.page(p).tree.prove(i).path, *self._upper.prove(p).path]

    def root(self, steps: int) -> bytes:
        if steps != self.steps:
            raise BundleError("dataset", f"it holds {self.steps} steps, not {steps}")
        return self.root_bytes

    def batch(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of step ``t``, verified against its leaf (copies: callers may keep them)."""
        self._check_step(t)
        if t in self._batches:
            self._batches.move_to_end(t)
            x, y = self._batches[t]
            return x.copy(), y.copy()
        p, i = divmod(t, self.ref.page_steps)
        page = self.page(p)
        part = f"batch of step {t}"
        size = self.ref.batch_bytes
        data = fetch_part(self.store, BlobRef(address=page.batches[i], size=size), part, size)
        self.fetched_bytes += len(data)
        nx = numel(self.ref.x_shape)
        flat = np.frombuffer(data, dtype="<f4")
        x = flat[:nx].reshape(self.ref.x_shape).astype(np.float32)
        y = flat[nx:].reshape(self.ref.y_shape).astype(np.float32)
        if tensor_root(x) + tensor_root(y) != page.leaves[i]:
            raise BundleError(part, "its tensors do not hash to the step's dataset leaf")
        self._batches[t] = (x, y)
        if len(self._batches) > self._cache[1]:
            self._batches.popitem(last=False)
        return x.copy(), y.copy()


@dataclass
class Bundle:
    """An opened, verified bundle: program, C_0 and a lazily fetched dataset."""

    address: str
    manifest: BundleManifest
    program: Program
    initial_state: dict[str, np.ndarray]
    dataset: BundleDataset
    store: BlobStore = field(repr=False)

    @classmethod
    def open(cls, store: BlobStore, address: str, spec: JobSpec | None = None) -> Bundle:
        """Fetch and verify everything but the dataset's pages and batches; with ``spec``,
        also that the job binds this bundle and that every root matches the job's."""
        address = address.removeprefix("0x").lower()
        if spec is not None and spec.bundle.hex() != address:
            raise BundleError(
                "manifest",
                f"{address} is not the bundle the job binds ({spec.bundle.hex()})"
                if any(spec.bundle)
                else "the job binds no bundle (JobSpec.bundle is zero)",
            )
        try:
            data = store.get(address, max_bytes=MAX_MANIFEST_BYTES)
        except BlobError as e:
            raise BundleError("manifest", str(e)) from None
        manifest: BundleManifest = _parse(BundleManifest, data, "manifest")
        if spec is not None:
            check_binding(manifest, spec)
        program = check_program(fetch_part(store, manifest.program, "program", MAX_PROGRAM_BYTES))
        check_program_matches(manifest, program)
        initial = load_initial(store, manifest.initial, program)
        dataset = open_dataset(store, manifest.dataset)
        return cls(address, manifest, program, initial, dataset, store)

    def job_spec(self, every: int, **params: Any) -> JobSpec:
        """The JobSpec binding this bundle (its roots, N, its hash), checkpointing every
        ``every`` steps, with the job's economic parameters."""
        m = self.manifest
        return JobSpec(
            program_root=from_hex(m.program_root),
            program_len=m.program_len,
            dataset_root=from_hex(m.dataset.root),
            initial_root=from_hex(m.initial.state_root),
            bundle=bytes.fromhex(self.address),
            steps=m.dataset.steps,
            every=every,
            slots=m.slots,
            **params,
        )

    def metadata(self) -> BundleMetadata:
        data = fetch_part(self.store, self.manifest.metadata, "metadata", MAX_METADATA_BYTES)
        return _parse(BundleMetadata, data, "metadata")

    def refs(self) -> Iterator[BlobRef]:
        """Every blob the bundle names: manifest, program, C_0, metadata, sources, index, then
        each dataset page (fetched and checked against its root) and the batches it names."""
        m = self.manifest
        manifest = self.store.get(self.address, max_bytes=MAX_MANIFEST_BYTES)
        yield BlobRef(address=self.address, size=len(manifest))
        yield from (m.program, m.initial.manifest, m.initial.tensors, m.metadata)
        yield from (source.blob for source in self.metadata().sources)
        yield m.dataset.index
        ds = self.dataset
        for p in range(m.dataset.pages):
            page = ds.page(p)
            yield BlobRef(address=ds.page_address(p), size=len(page.leaves) * PAGE_ENTRY_BYTES)
            for address in page.batches:
                yield BlobRef(address=address, size=m.dataset.batch_bytes)

    def check_complete(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Fetch and verify every part: each source file within its limit, every page against
        its root and every batch against its step's leaf (BundleError names the first part
        that fails)."""
        for source in self.metadata().sources:
            fetch_part(self.store, source.blob, f"source {source.path}", MAX_SOURCE_BYTES)
        ds = self.dataset
        for t in range(ds.steps):
            ds.batch(t)
            if progress is not None:
                progress(t + 1, ds.steps)


def publish_bundle(
    bundle: Bundle, locations: list[str], progress: Callable[[int, int], None] | None = None
) -> None:
    """Copy every blob of ``bundle`` into the writable stores among ``locations``, then open
    it again from those stores alone and check it is complete (BundleError otherwise)."""
    from protocol.blobs import open_stores

    target = open_stores(locations)
    refs = list(bundle.refs())
    total = len(refs) + bundle.dataset.steps
    writable = [s for s in target.stores if isinstance(s, FileStore)]
    with ExitStack() as bulk:
        for store in writable:
            bulk.enter_context(store.bulk())
        for i, ref in enumerate(refs if writable else []):
            data = bundle.store.get(ref.address, max_bytes=ref.size)
            for store in writable:
                store.put(data)
            if progress is not None:
                progress(i + 1, total)
    # no writable store: the bundle must already be in the given ones; the check below says
    copy = Bundle.open(target, bundle.address)

    def checked(done: int, steps: int) -> None:
        if progress is not None:
            progress(len(refs) + done, total)

    copy.check_complete(checked)


def check_binding(manifest: BundleManifest, spec: JobSpec) -> None:
    """The manifest's roots and counts are the job's."""
    pairs = {
        "program_root": (manifest.program_root, to_hex(spec.program_root)),
        "program_len": (manifest.program_len, spec.program_len),
        "slots": (manifest.slots, spec.slots),
        "dataset root": (manifest.dataset.root, to_hex(spec.dataset_root)),
        "dataset steps": (manifest.dataset.steps, spec.steps),
        "initial state root": (manifest.initial.state_root, to_hex(spec.initial_root)),
    }
    for what, (ours, theirs) in pairs.items():
        if ours != theirs:
            raise BundleError("manifest", f"its {what} {ours} is not the job's {theirs}")


def check_program_matches(manifest: BundleManifest, program: Program) -> None:
    if to_hex(program.root()) != manifest.program_root:
        raise BundleError("program", "its descriptors do not hash to the manifest's program_root")
    if len(program.ops) != manifest.program_len or len(program.slots) != manifest.slots:
        raise BundleError(
            "program",
            f"{len(program.ops)} ops and {len(program.slots)} slots, the manifest says "
            f"{manifest.program_len} and {manifest.slots}",
        )
    ds = manifest.dataset
    for which, shape in batch_shapes(program).items():
        want = ds.x_shape if which == BATCH_X else ds.y_shape
        if shape != want:
            half = "x" if which == BATCH_X else "y"
            raise BundleError(
                "program",
                f"LOAD_BATCH of {half} reads {list(shape)}, the dataset's batches are {list(want)}",
            )


def open_dataset(store: BlobStore, ref: DatasetRef) -> BundleDataset:
    """The dataset's index, checked against the dataset root (no page is fetched)."""
    if ref.batch_bytes > MAX_BATCH_BYTES:
        raise BundleError("dataset", f"batches of {ref.batch_bytes} bytes exceed {MAX_BATCH_BYTES}")
    if ref.index.size != ref.pages * INDEX_ENTRY_BYTES:
        raise BundleError(
            "dataset index",
            f"{ref.index.size} bytes for {ref.pages} pages of {ref.page_steps} steps "
            f"(expected {ref.pages * INDEX_ENTRY_BYTES})",
        )
    data = fetch_part(store, ref.index, "dataset index", ref.pages * INDEX_ENTRY_BYTES)
    addresses = [data[i * 64 : i * 64 + 32].hex() for i in range(ref.pages)]
    roots = [data[i * 64 + 32 : i * 64 + 64] for i in range(ref.pages)]
    if root_of_leaf_hashes(roots) != from_hex(ref.root):
        raise BundleError("dataset index", "its page roots do not hash to the dataset root")
    return BundleDataset(store, ref, addresses, roots)


# ---------------------------------------------------------------- writing


def _put(store: BlobStore, data: bytes) -> BlobRef:
    return BlobRef(address=store.put(data), size=len(data))


def write_bundle(
    store: BlobStore,
    program: Program,
    initial_state: Mapping[str, np.ndarray],
    dataset: Any,
    steps: int,
    metadata: BundleMetadata,
    sources: Mapping[str, bytes] | None = None,
    page_steps: int = PAGE_STEPS,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[str, BundleManifest]:
    """Publish a job's bundle into ``store``: the program, C_0, ``steps`` batches of
    ``dataset`` (paged), the metadata and the model's source files. Returns the bundle's
    address (what ``JobSpec.bundle`` binds) and its manifest."""
    validate_program(program)
    shapes = batch_shapes(program)
    x0, y0 = (np.asarray(a, dtype=np.float32) for a in dataset.batch(0))
    x_shape = tuple(x0.shape) if BATCH_X not in shapes else shapes[BATCH_X]
    y_shape = tuple(y0.shape) if BATCH_Y not in shapes else shapes[BATCH_Y]
    leaves: list[bytes] = []
    page_entries: list[bytes] = []
    index: list[bytes] = []
    page_roots: list[bytes] = []

    def flush() -> None:
        page_root = merkle_root(leaves[-len(page_entries) :])
        index.append(bytes.fromhex(_put(store, b"".join(page_entries)).address) + page_root)
        page_roots.append(page_root)
        page_entries.clear()

    for t in range(steps):
        x, y = (np.ascontiguousarray(a, dtype="<f4") for a in dataset.batch(t))
        if tuple(x.shape) != x_shape or tuple(y.shape) != y_shape:
            raise BundleError(
                "dataset",
                f"step {t}'s batch is x {list(x.shape)}, y {list(y.shape)}; the job reads "
                f"x {list(x_shape)}, y {list(y_shape)}",
            )
        leaf = tensor_root(x) + tensor_root(y)
        leaves.append(leaf)
        page_entries.append(leaf + bytes.fromhex(store.put(x.tobytes() + y.tobytes())))
        if len(page_entries) == page_steps:
            flush()
        if progress is not None:
            progress(t + 1, steps)
    if page_entries:
        flush()
    dataset_root = root_of_leaf_hashes(page_roots)
    assert dataset_root == merkle_root(leaves)
    source_files = tuple(
        SourceFile(path=path, blob=_put(store, data)) for path, data in (sources or {}).items()
    )
    meta = metadata.model_copy(update={"sources": source_files})
    with tempfile.TemporaryDirectory(prefix="trainproof-bundle-") as tmp:
        c0 = _save_checkpoint(Path(tmp), 0, program, initial_state)
        initial = InitialRef(
            manifest=_put(store, (Path(tmp) / c0.file).with_suffix(".json").read_bytes()),
            tensors=_put(store, (Path(tmp) / c0.file).read_bytes()),
            state_root=c0.state_root,
        )
    manifest = BundleManifest(
        name=metadata.name,
        program=_put(store, program.model_dump_json().encode()),
        program_root=to_hex(program.root()),
        program_len=len(program.ops),
        slots=len(program.slots),
        initial=initial,
        dataset=DatasetRef(
            steps=steps,
            page_steps=page_steps,
            root=to_hex(dataset_root),
            x_shape=x_shape,
            y_shape=y_shape,
            index=_put(store, b"".join(index)),
        ),
        metadata=_put(store, meta.model_dump_json(indent=1).encode()),
    )
    data = manifest.model_dump_json(indent=1).encode()
    address = store.put(data)
    assert address == address_of(data)
    return address, manifest


def save_bundle_dir(folder: Path, **kwargs: Any) -> tuple[str, BundleManifest]:
    """:func:`write_bundle` into a new folder (a blob store folder plus ``bundle.json``)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BundleError("folder", f"{folder} exists and is not empty; choose a new --out")
    store = FileStore(folder)
    with store.bulk():
        address, manifest = write_bundle(store, **kwargs)
    (folder / "bundle.json").write_text(
        BundleDir(bundle=address, name=manifest.name).model_dump_json(indent=1)
    )
    return address, manifest


def read_bundle_dir(folder: Path) -> tuple[FileStore, str]:
    """The store and bundle address of a bundle folder."""
    path = Path(folder) / "bundle.json"
    if not path.is_file():
        raise BundleError("folder", f"{folder} has no bundle.json; make one with trainproof bundle")
    info: BundleDir = _parse(BundleDir, path.read_bytes(), "folder")
    return FileStore(Path(folder)), info.bundle


# ---------------------------------------------------------------- for the services


class BundleSource:
    """The bundles of jobs, opened from a store (set) and kept: a bundle that can't be had
    is retried with exponential backoff (``BundleError`` is raised again until then)."""

    def __init__(
        self,
        store: BlobStore,
        base_delay: float = 2.0,
        max_delay: float = 300.0,
        keep: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._delays = (base_delay, max_delay)
        self._keep = keep
        self._clock = clock
        self._open: OrderedDict[str, Bundle] = OrderedDict()
        self._failed: dict[str, tuple[int, float, BundleError]] = {}

    def retry_in(self, spec: JobSpec) -> float:
        """Seconds until the bundle of ``spec`` is tried again (0: now)."""
        failed = self._failed.get(spec.bundle.hex())
        return 0.0 if failed is None else max(0.0, failed[1] - self._clock())

    def tries(self, spec: JobSpec) -> int:
        failed = self._failed.get(spec.bundle.hex())
        return 0 if failed is None else failed[0]

    def bundle(self, spec: JobSpec) -> Bundle:
        """The verified bundle ``spec`` binds; BundleError naming the part when it can't be
        fetched or doesn't verify (and, during the backoff after a failure, that failure)."""
        key = spec.bundle.hex()
        if key in self._open:
            self._open.move_to_end(key)
            bundle = self._open[key]
            check_binding(bundle.manifest, spec)
            return bundle
        failed = self._failed.get(key)
        if failed is not None and self._clock() < failed[1]:
            raise failed[2]
        try:
            bundle = Bundle.open(self.store, key, spec)
        except BundleError as e:
            tries = 1 if failed is None else failed[0] + 1
            delay = min(self._delays[1], self._delays[0] * 2 ** (tries - 1))
            self._failed[key] = (tries, self._clock() + delay, e)
            raise
        self._failed.pop(key, None)
        self._open[key] = bundle
        if len(self._open) > self._keep:
            self._open.popitem(last=False)
        return bundle
