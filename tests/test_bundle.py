"""Job bundles (replay/data/bundle.py, docs/protocol.md §5.4): written, opened and verified
part by part; every tampering is refused with an error naming the part."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.blobs import FileStore, MemoryStore, StoreSet, address_of
from protocol.merkle import MerkleTree
from replay.data.bundle import (
    MAX_METADATA_BYTES,
    BlobRef,
    Bundle,
    BundleError,
    BundleManifest,
    BundleMetadata,
    write_bundle,
)
from replay.dispute.players import (
    Computation,
    example_computation,
    job_spec_for,
    write_job_bundle,
)
from trainproof.datasets import from_arrays

STEPS = 10


@functools.cache
def digits_mlp() -> Computation:
    return example_computation("digits-mlp", STEPS, 5)


@pytest.fixture(scope="module")
def comp() -> Computation:
    return digits_mlp()


@pytest.fixture()
def written(tmp_path: Path, comp: Computation) -> tuple[FileStore, str, BundleManifest]:
    store = FileStore(tmp_path / "store")
    address, manifest = write_bundle(
        store, comp.program, comp.state_before(0), comp.dataset, STEPS,
        BundleMetadata(name="digits-mlp", description="test"), sources={"model.py": b"x = 1\n"},
        page_steps=4,
    )  # fmt: skip
    return store, address, manifest


def blob_file(store: FileStore, address: str) -> Path:
    return store.root / "blobs" / address[:2] / address[2:]


def remake(store: FileStore, manifest: BundleManifest, **update: object) -> str:
    """A new manifest (another bundle) with some fields replaced: what a forger publishes."""
    return store.put(manifest.model_copy(update=update).model_dump_json().encode())


def fails(store: object, address: str, part: str, spec: object = None) -> BundleError:
    with pytest.raises(BundleError) as e:
        bundle = Bundle.open(store, address, spec)  # type: ignore[arg-type]
        bundle.check_complete()
    assert e.value.part == part, str(e.value)
    assert str(e.value).startswith(f"bundle {part}: ")
    return e.value


# ---------------------------------------------------------------- round trip


def test_a_bundle_opens_to_the_jobs_inputs(written: tuple, comp: Computation) -> None:
    store, address, manifest = written
    spec = job_spec_for(comp, stake=0, bond=0, clock=3600, window=3600, train_time=60)
    bundle = Bundle.open(store, address)
    bound = bundle.job_spec(every=5, stake=0, bond=0, clock=3600, window=3600, train_time=60)
    for field in ("program_root", "program_len", "dataset_root", "initial_root", "steps", "slots"):
        assert getattr(bound, field) == getattr(spec, field), field
    assert bound.bundle == bytes.fromhex(address)
    Bundle.open(store, address, bound).check_complete()
    full = MerkleTree.from_leaves([comp.dataset.leaf(t) for t in range(STEPS)])
    ds = bundle.dataset
    assert manifest.dataset.pages == 3  # 4 + 4 + 2 steps
    for t in range(STEPS):
        assert ds.leaf(t) == comp.dataset.leaf(t)
        assert ds.proof(t) == list(full.prove(t).path)
        x, y = ds.batch(t)
        want_x, want_y = comp.dataset.batch(t)
        assert np.array_equal(x, want_x) and np.array_equal(y, want_y)
    assert [s.path for s in bundle.metadata().sources] == ["model.py"]
    # the whole bundle's blobs: manifest, program, C_0 x2, metadata, source, index, 3 pages,
    # 10 batches
    assert len(list(bundle.refs())) == 7 + 3 + STEPS


def test_the_same_job_always_has_the_same_bundle_address(comp: Computation) -> None:
    """A bundle is named by content: writing it again (another process, another hash seed
    for safetensors' metadata map) must give the same bytes, or jobs could not be re-bound."""
    assert len({write_job_bundle(MemoryStore(), comp) for _ in range(12)}) == 1


@settings(max_examples=20, deadline=None)
@given(steps=st.integers(1, 40), page_log=st.integers(0, 4), data=st.data())
def test_paged_proofs_are_the_dataset_trees(steps: int, page_log: int, data: st.DataObject) -> None:
    """Pages are aligned power-of-two blocks: their roots combine to MTH(all leaves), and a
    page path plus the upper path is RFC 9162's audit path, for any N and page size."""
    import tempfile

    comp = digits_mlp()
    rng = np.random.default_rng(steps * 31 + page_log)
    x = rng.normal(size=(steps * 64, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=steps * 64).astype(np.float32)
    dataset = from_arrays(x, y, batch_size=64, seed=0, heldout=0)
    with tempfile.TemporaryDirectory() as tmp:
        store = FileStore(Path(tmp))
        address, _ = write_bundle(
            store, comp.program, comp.state_before(0), dataset, steps,
            BundleMetadata(name="p"), page_steps=1 << page_log,
        )  # fmt: skip
        ds = Bundle.open(store, address).dataset
        full = MerkleTree.from_leaves([dataset.leaf(t) for t in range(steps)])
        assert ds.root(steps) == full.root
        for t in data.draw(st.lists(st.integers(0, steps - 1), min_size=1, max_size=5)):
            assert ds.proof(t) == list(full.prove(t).path)
            assert np.array_equal(ds.batch(t)[0], dataset.batch(t)[0])


# ---------------------------------------------------------------- every tampering


def test_a_changed_program_leaf_is_refused(written: tuple, comp: Computation) -> None:
    store, address, manifest = written
    program = json.loads(blob_file(store, manifest.program.address).read_bytes())
    fill = next(op for op in program["ops"] if op["opcode"] == 0x43 or op.get("imm"))
    fill["imm"] = (fill["imm"] or 0) ^ 1
    data = json.dumps(program).encode()
    forged = remake(store, manifest, program=BlobRef(address=store.put(data), size=len(data)))
    assert "do not hash to the manifest's program_root" in str(fails(store, forged, "program"))
    # served under the real program's address instead: the store's re-hash refuses it
    blob_file(store, manifest.program.address).write_bytes(data[: manifest.program.size].ljust(
        manifest.program.size, b" "))  # fmt: skip
    assert "hashes to" in str(fails(store, address, "program"))


def test_an_op_with_fields_its_descriptor_does_not_commit_to_is_refused(written: tuple) -> None:
    store, _, manifest = written
    program = json.loads(blob_file(store, manifest.program.address).read_bytes())
    program["ops"][0]["comment"] = "run this instead"
    data = json.dumps(program).encode()
    forged = remake(store, manifest, program=BlobRef(address=store.put(data), size=len(data)))
    fails(store, forged, "program")


def test_a_swapped_dataset_batch_is_refused(written: tuple) -> None:
    store, address, _ = written
    bundle = Bundle.open(store, address)
    page = bundle.dataset.page(0)
    three, four = page.batches[3], page.batches[0]
    blob_file(store, three).write_bytes(blob_file(store, four).read_bytes())
    err = fails(store, address, "batch of step 3")
    assert "hashes to" in str(err)


def test_a_page_naming_another_steps_batch_is_refused(written: tuple) -> None:
    store, _, manifest = written
    index = blob_file(store, manifest.dataset.index.address).read_bytes()
    page0 = bytearray(blob_file(store, index[:32].hex()).read_bytes())
    page0[3 * 96 + 64 : 3 * 96 + 96] = page0[0 * 96 + 64 : 0 * 96 + 96]  # step 3 names 0's batch
    new_page = store.put(bytes(page0))  # its leaves are unchanged, so is its root
    new_index = bytes.fromhex(new_page) + index[32:]
    dataset = manifest.dataset.model_copy(
        update={"index": BlobRef(address=store.put(new_index), size=len(new_index))}
    )
    err = fails(store, remake(store, manifest, dataset=dataset), "batch of step 3")
    assert "do not hash to the step's dataset leaf" in str(err)
    page0[3 * 96 : 3 * 96 + 64] = page0[0:64]  # and with the leaf changed too: page root differs
    new_index = bytes.fromhex(store.put(bytes(page0))) + index[32:]
    dataset = manifest.dataset.model_copy(
        update={"index": BlobRef(address=store.put(new_index), size=len(new_index))}
    )
    fails(store, remake(store, manifest, dataset=dataset), "dataset page 0")


def test_an_altered_initial_tensor_is_refused(written: tuple, comp: Computation) -> None:
    store, _, manifest = written
    tensors = safetensors.numpy.load(
        blob_file(store, manifest.initial.tensors.address).read_bytes()
    )
    name = next(iter(tensors))
    tensors[name] = tensors[name].copy()
    tensors[name].reshape(-1)[0] += 1
    data = safetensors.numpy.save(tensors)
    forged = remake(store, manifest, initial=manifest.initial.model_copy(
        update={"tensors": BlobRef(address=store.put(data), size=len(data))}))  # fmt: skip
    assert "hashes to" in str(fails(store, forged, "initial state"))


@pytest.mark.parametrize(
    ("update", "part"),
    [
        ({"program_len": 3}, "program"),
        ({"slots": 1}, "program"),
        ("program.size+1", "program"),
        ("index.size-64", "dataset index"),
        ("steps+4", "dataset index"),
        ("page_steps=2", "dataset index"),
        ("x_shape", "program"),
        ("metadata.size=huge", "metadata"),
    ],
)
def test_a_manifest_lying_about_sizes_or_counts_is_refused(
    written: tuple, update: object, part: str
) -> None:
    store, _, manifest = written
    ds = manifest.dataset
    changes: dict[str, object]
    if isinstance(update, dict):
        changes = update
    elif update == "program.size+1":
        changes = {
            "program": manifest.program.model_copy(update={"size": manifest.program.size + 1})
        }
    elif update == "index.size-64":
        changes = {"dataset": ds.model_copy(update={"index": ds.index.model_copy(
            update={"size": ds.index.size - 64})})}  # fmt: skip
    elif update == "steps+4":
        changes = {"dataset": ds.model_copy(update={"steps": ds.steps + 4})}
    elif update == "page_steps=2":
        changes = {"dataset": ds.model_copy(update={"page_steps": 2})}
    elif update == "x_shape":
        changes = {"dataset": ds.model_copy(update={"x_shape": (32, 64)})}
    else:
        changes = {
            "metadata": manifest.metadata.model_copy(update={"size": MAX_METADATA_BYTES + 1})
        }
    forged = remake(store, manifest, **changes)
    with pytest.raises(BundleError) as e:
        bundle = Bundle.open(store, forged)
        bundle.metadata()
        bundle.check_complete()
    assert e.value.part == part, str(e.value)


def test_a_blob_over_the_limit_is_refused(written: tuple) -> None:
    store, _, _ = written
    big = store.put(b" " * ((1 << 20) + 1))
    assert "manifest" == fails(store, big, "manifest").part
    assert "malformed" in str(fails(store, store.put(b'{"format": "nope"}'), "manifest"))


def test_a_bundle_the_job_does_not_bind_is_refused(written: tuple, comp: Computation) -> None:
    store, address, _ = written
    bundle = Bundle.open(store, address)
    spec = bundle.job_spec(every=5, stake=0, bond=0, clock=3600, window=3600, train_time=60)
    other = spec.model_copy(update={"bundle": b"\x11" * 32})
    assert "is not the bundle the job binds" in str(fails(store, address, "manifest", other))
    unbound = spec.model_copy(update={"bundle": b"\x00" * 32})
    assert "binds no bundle" in str(fails(store, address, "manifest", unbound))
    lying = spec.model_copy(update={"dataset_root": b"\x22" * 32})
    assert "dataset root" in str(fails(store, address, "manifest", lying))


# ---------------------------------------------------------------- a store that serves garbage


@pytest.fixture()
def garbage_server() -> Iterator[str]:
    class Garbage(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"garbage " * 8
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_store_serving_garbage_is_passed_over(written: tuple, garbage_server: str) -> None:
    from protocol.blobs import open_stores

    store, address, _ = written
    fails(open_stores([garbage_server]), address, "manifest")
    both = open_stores([garbage_server, str(store.root)])
    assert isinstance(both, StoreSet)
    Bundle.open(both, address).check_complete()


def test_blob_addresses_are_sha256(written: tuple) -> None:
    store, address, _ = written
    assert address_of(blob_file(store, address).read_bytes()) == address


# ---------------------------------------------------------------- memory


def test_a_long_replay_keeps_only_checkpoint_states_and_a_bounded_cache(comp: Computation) -> None:
    long = Computation(comp.program, comp.dataset, comp.state_before(0), 40, 10, cache=3)
    long.step_root(40)
    kept = sorted(long._states)
    assert set(kept) >= {0, 10, 20, 30, 40}
    assert len(kept) <= 5 + 3
    again = Computation(comp.program, comp.dataset, comp.state_before(0), 40, 10, cache=40)
    assert again.step_root(37) == long.step_root(37)  # recomputed from its interval's start
