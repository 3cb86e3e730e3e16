"""The model repository: versions appear whole or not at all, and metadata round-trips."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from serving.engine.repository import META_FILE, ModelRepository, VersionMeta
from serving.errors import InvalidInput, ModelNotFound, RepositoryError, VersionNotFound
from serving.types import Signature, TensorSpec

META = VersionMeta(
    framework="fake",
    platform="numpy_affine",
    architecture="linear",
    signature=Signature(
        inputs=(TensorSpec("size_sqft", "FP32", (-1, 1)),),
        outputs=(TensorSpec("price_k", "FP32", (-1, 1)), TensorSpec("tag", "BYTES", (-1,))),
    ),
    metrics={"loss": 0.125, "weight": 0.2},
    hyperparameters={"epochs": 3, "learning_rate": 0.05, "layers": [4, 2]},
    dataset="house_price(n=8)",
    created="2025-01-02T03:04:05+00:00",
)


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(tmp_path / "models")


def _write_version(repo: ModelRepository, model: str, payload: str = "w") -> int:
    with repo.new_version(model) as staged:
        (staged.path / "weights.txt").write_text(payload)
        repo.write_meta(staged.path, META)
    return staged.version


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_versions_are_numbered_from_one(repo: ModelRepository) -> None:
    assert [_write_version(repo, "m", f"v{i}") for i in range(3)] == [1, 2, 3]
    assert repo.versions("m") == [1, 2, 3]
    assert (repo.path("m", 2) / "weights.txt").read_text() == "v1"
    assert repo.read_meta("m", 3) == META
    assert _leftovers(repo.root / "m") == ["1", "2", "3"]


def test_staging_directory_is_hidden_until_the_context_exits(repo: ModelRepository) -> None:
    with repo.new_version("m") as staged:
        assert staged.version == 0  # not numbered until it is committed
        staging = staged.path
        assert staging.parent == repo.root / ".staging"
        assert staging.name.startswith("m-")
        # Outside the model's directory: no reader sees the model before its version.
        assert repo.models() == []
        repo.write_meta(staging, META)
    assert staged.version == 1
    assert repo.versions("m") == [1]
    assert not staging.exists()


def test_exception_inside_the_context_leaves_nothing(repo: ModelRepository) -> None:
    _write_version(repo, "m")
    with (
        pytest.raises(RuntimeError, match="training blew up"),
        repo.new_version("m") as staged,
    ):
        (staged.path / "weights.txt").write_text("half")
        repo.write_meta(staged.path, META)
        raise RuntimeError("training blew up")
    assert _leftovers(repo.root / "m") == ["1"]
    assert repo.versions("m") == [1]
    # The number was not consumed.
    assert _write_version(repo, "m") == 2


def test_version_without_metadata_is_refused(repo: ModelRepository) -> None:
    with (
        pytest.raises(RepositoryError, match="without metadata"),
        repo.new_version("m") as staged,
    ):
        (staged.path / "weights.txt").write_text("w")
    # The model was new: nothing of it is left, not even an empty directory.
    assert not (repo.root / "m").exists()
    assert repo.models() == []


def test_half_written_directories_are_ignored(repo: ModelRepository) -> None:
    _write_version(repo, "m")
    model_dir = repo.root / "m"
    (model_dir / ".tmp-0123abcd").mkdir()
    (model_dir / ".tmp-0123abcd" / META_FILE).write_text(META.to_json())
    (model_dir / "2").mkdir()  # a version directory that never got its model.json
    (model_dir / "2" / "weights.txt").write_text("partial")
    (model_dir / "0").mkdir()
    (model_dir / "0" / META_FILE).write_text(META.to_json())
    (model_dir / "\u00b2").mkdir()  # isdigit() but not a number int() reads
    (model_dir / "\u00b2" / META_FILE).write_text(META.to_json())
    (model_dir / "notes.txt").write_text("not a directory")
    assert repo.versions("m") == [1]
    with pytest.raises(VersionNotFound, match="no version 2"):
        repo.read_meta("m", 2)


def test_new_version_skips_numbers_taken_by_half_written_directories(
    repo: ModelRepository,
) -> None:
    _write_version(repo, "m")
    (repo.root / "m" / "2").mkdir()
    (repo.root / "m" / "2" / "weights.txt").write_text("partial")
    assert _write_version(repo, "m", "fresh") == 3
    assert repo.versions("m") == [1, 3]
    assert (repo.path("m", 3) / "weights.txt").read_text() == "fresh"
    assert (repo.root / "m" / "2" / "weights.txt").read_text() == "partial"


def test_models_lists_valid_model_directories_only(repo: ModelRepository) -> None:
    _write_version(repo, "b_model")
    _write_version(repo, "a-model.v2")
    (repo.root / ".hidden").mkdir()
    (repo.root / "README").write_text("x")
    assert repo.models() == ["a-model.v2", "b_model"]


def test_version_meta_json_round_trip() -> None:
    text = META.to_json()
    again = VersionMeta.from_json(text)
    assert again == META
    assert again.signature.inputs[0].shape == (-1, 1)
    assert again.signature.output("tag") == TensorSpec("tag", "BYTES", (-1,))
    assert again.to_json() == text


def test_write_meta_stamps_the_creation_time(repo: ModelRepository, tmp_path: Path) -> None:
    unstamped = VersionMeta(
        framework="fake", platform="p", architecture="linear", signature=META.signature
    )
    repo.write_meta(tmp_path, unstamped)
    stored = VersionMeta.from_json((tmp_path / META_FILE).read_text())
    assert stored.created.startswith("20")
    assert stored.signature == META.signature


def test_invalid_metadata_is_a_repository_error(repo: ModelRepository) -> None:
    _write_version(repo, "m")
    (repo.path("m", 1) / META_FILE).write_text('{"framework": "fake"}')
    with pytest.raises(RepositoryError, match="not valid version metadata"):
        repo.read_meta("m", 1)


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-dash", "_under", "a/b", "../escape", "sp ace", "x" * 129, "é"]
)
def test_invalid_model_names_are_rejected(repo: ModelRepository, name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid model name"):
        repo.versions(name)
    with pytest.raises(InvalidInput, match="invalid model name"):
        repo.path(name, 1)
    with pytest.raises(InvalidInput, match="invalid model name"), repo.new_version(name):
        pass
    assert _leftovers(repo.root) == []


@pytest.mark.parametrize("name", ["m", "house_price", "Model-1.2", "x" * 128])
def test_valid_model_names_are_accepted(repo: ModelRepository, name: str) -> None:
    assert _write_version(repo, name) == 1
    assert repo.models() == [name]


def test_unknown_model(repo: ModelRepository) -> None:
    with pytest.raises(ModelNotFound, match="'nope' is not in the repository"):
        repo.versions("nope")
    _write_version(repo, "m")
    with pytest.raises(VersionNotFound, match="'m' has no version 7"):
        repo.read_meta("m", 7)
    with pytest.raises(ModelNotFound):
        repo.read_meta("nope", 1)


def test_the_number_is_picked_at_commit_not_at_start(repo: ModelRepository) -> None:
    # Two writers of one model overlapping (two replicas training it): the one that started
    # first commits last and gets the next number instead of failing on the same one.
    with repo.new_version("m") as first:
        (first.path / "weights.txt").write_text("first")
        repo.write_meta(first.path, META)
        assert _write_version(repo, "m", "second") == 1
    assert first.version == 2
    assert repo.versions("m") == [1, 2]
    assert (repo.path("m", 2) / "weights.txt").read_text() == "first"
    assert _leftovers(repo.root / "m") == ["1", "2"]


def test_a_number_claimed_by_another_writer_moves_on_to_the_next(
    repo: ModelRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_version(repo, "m")
    model_dir = repo.root / "m"
    mkdir = Path.mkdir

    def other_writer_claims_first(self: Path, *args: Any, **kwargs: Any) -> None:
        # Another process commits version 2 between this writer's scan and its claim.
        if self == model_dir / "2" and not self.exists():
            mkdir(self)
            repo.write_meta(self, META)
        mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", other_writer_claims_first)
    assert _write_version(repo, "m", "mine") == 3
    assert repo.versions("m") == [1, 2, 3]
    assert (repo.path("m", 3) / "weights.txt").read_text() == "mine"


def test_a_writer_that_renames_onto_the_claim_moves_on_to_the_next(
    repo: ModelRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rename(2) replaces an empty directory: a writer that renames without claiming can take
    # the number between this writer's claim and its rename.
    rename = os.rename
    raced: list[str] = []

    def other_writer_renames_first(src: Any, dst: Any) -> None:
        if not raced:
            raced.append(str(dst))
            other = repo.root / ".staging" / "other"
            other.mkdir()
            repo.write_meta(other, META)
            rename(other, dst)
        rename(src, dst)

    monkeypatch.setattr(os, "rename", other_writer_renames_first)
    assert _write_version(repo, "m", "mine") == 2
    assert raced == [str(repo.root / "m" / "1")]
    assert repo.versions("m") == [1, 2]
    assert not (repo.path("m", 1) / "weights.txt").exists()
    assert (repo.path("m", 2) / "weights.txt").read_text() == "mine"


def test_files_and_directories_are_fsynced_around_the_rename(
    repo: ModelRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    fsync, rename = os.fsync, os.rename

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_rename(src: Any, dst: Any) -> None:
        events.append(("rename", str(dst)))
        rename(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "rename", recording_rename)
    with repo.new_version("m") as staged:
        staging = str(staged.path)
        (staged.path / "variables").mkdir()
        (staged.path / "variables" / "data.bin").write_bytes(b"\0" * 10)
        (staged.path / "weights.txt").write_text("w")
        repo.write_meta(staged.path, META)
    model_dir = str(repo.root / "m")
    rename_at = events.index(("rename", f"{model_dir}/1"))
    before = {path for kind, path in events[:rename_at]}
    after = [path for kind, path in events[rename_at + 1 :]]
    # Every file and directory of the version, contents before the directories holding them.
    assert before == {
        f"{staging}/variables/data.bin",
        f"{staging}/variables",
        f"{staging}/weights.txt",
        f"{staging}/{META_FILE}",
        staging,
    }
    assert events[rename_at - 1] == ("fsync", staging)
    # Then the rename itself, and the new model's entry in the root.
    assert after == [model_dir, str(repo.root)]


def test_no_fsync_or_rename_when_the_writer_fails(
    repo: ModelRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    with pytest.raises(RuntimeError), repo.new_version("m") as staged:
        repo.write_meta(staged.path, META)
        raise RuntimeError("training blew up")
    assert calls == []
    assert not (repo.root / "m").exists()
