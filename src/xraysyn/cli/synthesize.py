"""``xraysyn synthesize``: novel views, bone and tissue maps and the estimated CT of real radiographs;
``xraysyn suppress``: bone image and bone-suppressed radiograph at full resolution (PNG, DICOM)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from xraysyn.cli import app
from xraysyn.cli.common import EXIT_BAD_INPUT, user_errors

#: Exit status when some inputs of a batch failed (the others were written; the summary names the failures).
EXIT_SOME_INPUTS_FAILED = 1
DEFAULT_AZIMUTHS = "-9:9:20"
SUMMARY_FILE = "summary.json"


def parse_angles(text: str, option: str) -> list[float]:
    """``START:STOP:COUNT`` (COUNT evenly spaced values, both ends included), ``A,B,C`` or one number → degrees."""
    import math

    try:
        if ":" in text:
            start, stop, count = text.split(":")
            count = int(count)
            if count < 1:
                raise ValueError
            start, stop = float(start), float(stop)
            values = [start] if count == 1 else [start + (stop - start) * i / (count - 1) for i in range(count)]
        else:
            values = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} must be START:STOP:COUNT (e.g. -9:9:20), a comma list or one number of "
                         f"degrees, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{option} must be finite degrees, got {text!r}")
    return values


def _unique_stems(names: list[str]) -> list[str]:
    """An output folder name per input: the file stem, ``_2``, ``_3``… for repeats."""
    stems, seen = [], {}
    for name in names:
        stem = Path(name).name
        for suffix in (".gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff"):
            if stem.lower().endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
        stem = stem or "input"
        count = seen.get(stem, 0) + 1
        seen[stem] = count
        stems.append(stem if count == 1 else f"{stem}_{count}")
    return stems


def _load_model(weights, device):
    from xraysyn.synthesis.model import XraySyn

    return XraySyn.from_pretrained(weights, device=device)


def _checked_inputs(inputs: list[Path], check_view: bool):
    from xraysyn.synthesis.inputs import prepare_inputs

    return prepare_inputs([str(path) for path in inputs], check_view=check_view)


def _report(out: Path, done: list[dict], failed: list[dict], what: str) -> None:
    from xraysyn.atomic import atomic_write

    text = json.dumps({"written": done, "failed": failed}, indent=1)
    atomic_write(out / SUMMARY_FILE, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    typer.echo(f"{what}: {len(done)} input(s) written to {out}" + (f"; {len(failed)} failed:" if failed else ""))
    for item in failed:
        typer.secho(f"  {item['input']}: {item['error']}", fg=typer.colors.RED, err=True)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _write_staged(write, result, folder: Path) -> None:
    from xraysyn.outputs import staged_output_folder

    with staged_output_folder(folder, overwrite=True) as staging:
        write(result, staging)


def _run_batch(inputs, out: Path, overwrite: bool, what: str, compute, write, check_view: bool) -> None:
    """Check every input, then for the good ones ``result = compute(name, radiograph)`` and ``write(result, folder)``
    into a staged folder each; report.

    Writing input k (PNG encoding, the figure, NIfTI: mostly outside the GIL, one core) runs in a background thread
    while input k+1 is computed; at most one write is in flight, so at most two results are held in memory. The
    summary keeps the inputs' order. On an interrupt the write in flight finishes (its folder lands whole) and
    nothing after it starts.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from xraysyn.outputs import check_output_folder

    check_output_folder(out, overwrite=overwrite)
    checked = _checked_inputs(inputs, check_view)
    out.mkdir(parents=True, exist_ok=True)
    stems = _unique_stems([name for name, _ in checked])
    outcomes: dict[int, dict] = {}  # input index → its summary entry
    for index, (name, item) in enumerate(checked):
        if isinstance(item, Exception):
            outcomes[index] = {"input": name, "error": str(item)}
    good = [(index, name, item, stem) for index, ((name, item), stem) in enumerate(zip(checked, stems))
            if index not in outcomes]

    def settle(index, name, stem, future):
        try:
            future.result()
            outcomes[index] = {"input": name, "folder": stem}
        except (ValueError, OSError, RuntimeError) as error:
            outcomes[index] = {"input": name, "error": _first_line(error)}

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"xraysyn-{what}-writer") as writer:
        in_flight = None
        for index, name, radiograph, stem in tqdm(good, desc=what, unit="input"):
            try:
                result = compute(name, radiograph)
            except (ValueError, OSError, RuntimeError) as error:
                outcomes[index] = {"input": name, "error": _first_line(error)}
                continue
            if in_flight is not None:
                settle(*in_flight)
            in_flight = (index, name, stem, writer.submit(_write_staged, write, result, out / stem))
        if in_flight is not None:
            settle(*in_flight)
    ordered = [outcomes[index] for index in sorted(outcomes)]
    done = [entry for entry in ordered if "folder" in entry]
    failed = [entry for entry in ordered if "error" in entry]
    _report(out, done, failed, what)
    if failed:
        raise typer.Exit(EXIT_SOME_INPUTS_FAILED if done else EXIT_BAD_INPUT)


@app.command("synthesize")
def synthesize_command(
    inputs: list[Path] = typer.Argument(..., help="Radiographs (DICOM CR/DX, PNG, JPEG) or folders of them."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: one sub-folder per input."),
    azimuth: str = typer.Option(DEFAULT_AZIMUTHS, "--azimuth",
                                help="View azimuths, degrees: START:STOP:COUNT, a comma list or one number."),
    elevation: float = typer.Option(0.0, "--elevation", help="Elevation of every view, degrees."),
    weights: str = typer.Option(None, "--weights", help="A file made by `xraysyn export` (default: shipped)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out folder."),
    skip_view_check: bool = typer.Option(False, "--skip-view-check",
                                         help="Do not refuse inputs that do not look like frontal chest views."),
):
    """Novel views of each radiograph (PNG + .npy per view, a GIF of the sweep), bone and tissue thickness maps
    (g/cm²), the estimated CT (NIfTI) and a figure like the paper's Fig. 1."""
    with user_errors():
        azimuths = parse_angles(azimuth, "--azimuth")
        parse_angles(str(elevation), "--elevation")
        model = _load_model(weights, device)
        from xraysyn.synthesis.writers import write_synthesis

        description = {"name": model.name, "weights": model.source, "sha256": model.export.get("sha256")}

        def compute(name, radiograph):
            result = model.synthesize([radiograph], azimuths, elevation, check_view=False)
            result.names = [name]
            return result

        def write(result, folder):
            write_synthesis(result, 0, folder, model=description)

        _run_batch(inputs, out, overwrite, "synthesize", compute, write, not skip_view_check)


@app.command("suppress")
def suppress_command(
    inputs: list[Path] = typer.Argument(..., help="Radiographs (DICOM CR/DX, PNG, JPEG) or folders of them."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: one sub-folder per input."),
    strength: float = typer.Option(1.0, "--strength", help="0 = unchanged … 1 = bone attenuates as soft tissue."),
    dicom: bool = typer.Option(False, "--dicom", help="Also write DICOM derived images keeping the input's IDs."),
    weights: str = typer.Option(None, "--weights", help="A file made by `xraysyn export` (default: shipped)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out folder."),
    skip_view_check: bool = typer.Option(False, "--skip-view-check",
                                         help="Do not refuse inputs that do not look like frontal chest views."),
):
    """Bone image and bone-suppressed radiograph of each input at its full resolution (reverse CT2Xray,
    Algorithm 1): PNG (16-bit for inputs of more than 8 bits) and, with --dicom, DICOM."""
    with user_errors():
        import math

        if not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
            raise ValueError(f"--strength must be in [0, 1], got {strength}")
        model = _load_model(weights, device)
        from xraysyn.synthesis.writers import write_suppression

        description = {"name": model.name, "weights": model.source, "sha256": model.export.get("sha256")}

        def compute(name, radiograph):
            result = model.suppress_bones([radiograph], strength, check_view=False)[0]
            result.name = name
            return result

        def write(result, folder):
            write_suppression(result, folder, dicom=dicom, model=description)

        _run_batch(inputs, out, overwrite, "suppress", compute, write, not skip_view_check)
