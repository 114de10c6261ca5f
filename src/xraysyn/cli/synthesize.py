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


def _run_batch(inputs, out: Path, overwrite: bool, what: str, work, check_view: bool) -> None:
    """Check every input, run ``work(name, radiograph, folder)`` for the good ones in a staged folder each, report."""
    from tqdm.auto import tqdm

    from xraysyn.outputs import check_output_folder, staged_output_folder

    check_output_folder(out, overwrite=overwrite)
    checked = _checked_inputs(inputs, check_view)
    out.mkdir(parents=True, exist_ok=True)
    stems = _unique_stems([name for name, _ in checked])
    done, failed = [], []
    good = [(name, item, stem) for (name, item), stem in zip(checked, stems) if not isinstance(item, Exception)]
    failed += [{"input": name, "error": str(item)} for name, item in checked if isinstance(item, Exception)]
    for name, radiograph, stem in tqdm(good, desc=what, unit="input"):
        try:
            with staged_output_folder(out / stem, overwrite=True) as folder:
                work(name, radiograph, folder)
            done.append({"input": name, "folder": stem})
        except (ValueError, OSError, RuntimeError) as error:
            failed.append({"input": name, "error": str(error).splitlines()[0] if str(error) else type(error).__name__})
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

        def work(name, radiograph, folder):
            result = model.synthesize([radiograph], azimuths, elevation, check_view=False)
            result.names = [name]
            write_synthesis(result, 0, folder, model=description)

        _run_batch(inputs, out, overwrite, "synthesize", work, not skip_view_check)


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

        def work(name, radiograph, folder):
            result = model.suppress_bones([radiograph], strength, check_view=False)[0]
            result.name = name
            write_suppression(result, folder, dicom=dicom, model=description)

        _run_batch(inputs, out, overwrite, "suppress", work, not skip_view_check)
