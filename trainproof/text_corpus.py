"""The text corpus: Python sources shipped inside the pinned torch 2.13.0 wheel (docs §3.10.1).

Nobody here wrote these bytes and they are the same on every machine with the pinned
environment: the 50 files ``torch/nn/modules/**.py`` and ``torch/optim/**.py`` of torch 2.13.0
(PyTorch, BSD-3-Clause licence; 1,410,526 bytes), in byte-wise sorted order of their paths,
each checked against the sha256 below, so a different wheel is refused with an error that
names the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from replay.errors import SpecError

TORCH_VERSION = "2.13.0"
CORPUS_NAME = "torch-2.13.0-sources"
CORPUS_LICENSE = "BSD-3-Clause (PyTorch)"

#: (path under ``torch/``, sha256 of its bytes), sorted by path (byte order).
FILES: tuple[tuple[str, str], ...] = (
    ("nn/modules/__init__.py", "213aa846a5d8840b85c139ae598c8820ba79191418a5571b1929cde9d5bba394"),
    (
        "nn/modules/_functions.py",
        "099e13793af2edc10a0a88e38befdc23f6bdaa86742ea5508113392dd9bb16db",
    ),
    (
        "nn/modules/activation.py",
        "116c0ef075470a794cccefd74f8b38af4fd8d93be3b6861bc11f28c4151c439a",
    ),
    ("nn/modules/adaptive.py", "ff4bdf1b81efb77b9f18261bf94f19fc797a7726a9ba8548d7cce293aba0a6ad"),
    ("nn/modules/batchnorm.py", "b59a648fe5d87ea98f953840a75542e0cd1ef89bf98127c9f00b8ed5051f1e07"),
    (
        "nn/modules/channelshuffle.py",
        "d4ad8fa1eac19f75afb4dde07d3c8b029eac8cc5610033e3808d1e5795c3d165",
    ),
    ("nn/modules/container.py", "73417ef19501a3e0fef8c6377ab660aac8c3e9b5034f3e652e6c6c91afd68bb8"),
    ("nn/modules/conv.py", "960644e52167a16ba8700badde44ebb53921dc38b1c90e379fc8a4870303fdc0"),
    ("nn/modules/distance.py", "cfbcd44f9fa42e2a3492ab7aaf71303600e998f0dca110ba41ab22943ff24ec9"),
    ("nn/modules/dropout.py", "2ac0b163bbdfa5c6c723fadc6637099bf8ee412e386c21502a1222edb68ce167"),
    ("nn/modules/flatten.py", "330f51bb10bfe15a94c080fb671b8179eba572812a001d7b66d1c66c37d04cb2"),
    ("nn/modules/fold.py", "a39f226ee376026911de8d9083d002070c7c880153961684bb21a9b9c671af5e"),
    (
        "nn/modules/instancenorm.py",
        "275653fce7c7495c31075b89a575b2280eb85d75bf51e77b3c9dc0540a9154b4",
    ),
    ("nn/modules/lazy.py", "531a0969400355d464cc3a970683f756196492a27da128038a96a38e7268ec79"),
    ("nn/modules/linear.py", "1961ad1a1f650e104b3c7f78d19af2d21bf977e7af6c3fdf2420aad563c9e202"),
    (
        "nn/modules/linear_cross_entropy.py",
        "e1e5b12dfec476a7f2e811178959e6287c444e16735f657f155824bfc38aeb2e",
    ),
    (
        "nn/modules/linear_cross_entropy_options.py",
        "86263422f4ecb1f1521a52cc7729f8ef48452b1e4859a193bcb17e12db683251",
    ),
    ("nn/modules/loss.py", "415e4ccbbab63b9cc2b79f09a338cca6fa191c07138a4fb419e3c841c4748ae0"),
    ("nn/modules/module.py", "341153e4099444f923f5b0766e8e41b45fbe909b87f4737cb28c828f297b7baa"),
    (
        "nn/modules/normalization.py",
        "96284b63a2088c7d378716d5114eb5b6a1c072d479116170fcfd284c57e84b4f",
    ),
    ("nn/modules/padding.py", "372bec6afd21d1d275aed52dea2e5cd239cfb5f22646521de7aedebac25c1cd9"),
    (
        "nn/modules/pixelshuffle.py",
        "378aea087fb60ef04a2c6e19a492c750db2ff18971dae4079bb571468a78096c",
    ),
    ("nn/modules/pooling.py", "6ac4546fa8cccde8df9f571e92e37869f73494b6d11bf325e2043ba549c22bf0"),
    ("nn/modules/rnn.py", "902deeba8fd7d3c92b00e3557071b3bb41cf747bd4b2b9d63757d88562688bde"),
    ("nn/modules/sparse.py", "4897b5402c35e49c830edaee1eacc1b1c3f802ddc8e7ddf4112a71c78bea81f5"),
    (
        "nn/modules/transformer.py",
        "6bd839ad0effe2554dc74900c0c3a5c02eb273b517f0d99a8c3d9b34c61f1559",
    ),
    (
        "nn/modules/upsampling.py",
        "ce62e7e6807353a83a12bd939882aaea91ae8aa8d4b7fe6e7c36d0d71884341f",
    ),
    ("nn/modules/utils.py", "912eec7b36f7714f7e07db30a618b0e0b68ed24cce95e8149626531ee16d2889"),
    ("optim/__init__.py", "525077e1dc0bd2a00b55b39f996ff3dc0d56ea34e2bd56a9da2459dcdd688757"),
    ("optim/_adafactor.py", "f9b822afc4222bdc23ac3cb963c08d1bc82852d803eb883d367e1858a7506155"),
    ("optim/_functional.py", "9180f17d3726e6355da26cf1608dfc0ed76f99bcafb47253de31bd6f572ec4b7"),
    (
        "optim/_multi_tensor/__init__.py",
        "205698469eed27f22aaa4963df94d2dbb6a6a30cef0e51f5e3ef73c04813367e",
    ),
    ("optim/_muon.py", "4d003aba2d0c7fcc24875845802e45edb4475a51a037e2caaa7b46c3944c0dae"),
    ("optim/_stateless.py", "93287acee02f60ddd7b10b9c120fed07a6e2ddfa30952ec14dbdfcb7092c73e2"),
    ("optim/adadelta.py", "1bba18c22d56a377c636cae2d9f83840e4318f199131f82404712e059dd662e3"),
    ("optim/adagrad.py", "3cb068d041031cc0cc7315d01f5327bcee3c8439f4c72af700ee8c1c3db5096e"),
    ("optim/adam.py", "bde360b0bb9b7869f1cec04a3b41a90b8eabb84a613787d97b88d87f2f3ae1ec"),
    ("optim/adamax.py", "1f15c2e8f2bba4b6847d8242c8ead071b9d7df1ee5add1d4412f2a7b4bc986ff"),
    ("optim/adamw.py", "d0f3a2d889a43b65ed48175900f634bb5a244c8cd79a3f1117dc852ddad4b1e9"),
    ("optim/asgd.py", "0a13fc5f5bf540ba64a0dd9f3fae894f3ad01d30864672e775ba36c23e3b2a2a"),
    ("optim/lbfgs.py", "a1bcd0a4650af947d74d73bdc5955860c7fceec84250784e0de82c37ea18f84f"),
    ("optim/lr_scheduler.py", "66a1c5acd3716a37e7127123e80bb9474708384a0fb360cfd5b2fd6f45a81fa1"),
    ("optim/nadam.py", "2d215cc5829912c1d84fc11c83477c0aac2fc071495b69bb4b842011ebc2081e"),
    ("optim/optimizer.py", "2e94d8a3f8e88361e853db1c0642f8dea407d42c3c931deaa0ea7a6d6129d45a"),
    ("optim/radam.py", "bc5053e66285959389c70672ebc75ae69a82612f4009f881bd07e689876a4b5a"),
    ("optim/rmsprop.py", "0f2d29411df558c824b85d0c3c4aecb9a41ca806099b3de10a495f1fe3d1024c"),
    ("optim/rprop.py", "dcb14d8c7664d1ac752c2706a04fd1fc1ffec7c1b462319db1e83cd6d73f8342"),
    ("optim/sgd.py", "33c98d8a8fc789697a7bfecbe7aaf39f6346c42fef935169402d05ea131a38e7"),
    ("optim/sparse_adam.py", "aa75a1cfa837113bf393c59570479d83ff9b3053507cf40726dd6cedbb7a3057"),
    ("optim/swa_utils.py", "4de67de8e32a0145c122c400cd98e0b82ed025f24d6af243dd2979d93e02b0cd"),
)


def torch_dir() -> Path:
    """The installed torch package folder (located without importing torch)."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError("torch is not installed: the text corpus is torch 2.13.0's own sources")
    return Path(next(iter(spec.submodule_search_locations)))


def manifest_sha256(files: tuple[tuple[str, str], ...] | None = None) -> str:
    """sha256 of the file list: ``"<path> <sha256>\\n"`` per file, in order."""
    files = FILES if files is None else files
    return hashlib.sha256("".join(f"{p} {h}\n" for p, h in files).encode()).hexdigest()


def corpus_files() -> list[tuple[str, bytes]]:
    """The corpus as (path, bytes) in list order; refuses any file whose sha256 differs."""
    root = torch_dir()
    out = []
    for rel, want in FILES:
        path = root / rel
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SpecError(
                f"text corpus file torch/{rel} is missing ({exc.strerror}); "
                f"the corpus is the sources of the torch {TORCH_VERSION} wheel"
            ) from None
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise SpecError(
                f"text corpus file {path} has sha256 {got[:16]}…, expected {want[:16]}…: "
                f"not torch {TORCH_VERSION}'s file (install the pinned torch=={TORCH_VERSION})"
            )
        out.append((rel, data))
    return out
