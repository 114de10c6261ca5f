"""A small CR DICOM file with patient and study identifiers, written with pydicom (tests of DICOM in/out)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
BITS = 12
TOP = 2**BITS - 1
ROWS, COLS = 9, 7
IDENTIFIERS = {
    "PatientName": "Müller^Jürgen",  # not ASCII: stored Latin-1 in the source, UTF-8 in the output
    "PatientID": "P-0042",
    "PatientBirthDate": "19600102",
    "PatientSex": "M",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.777",
    "StudyDate": "20240131",
    "StudyTime": "101500",
    "StudyID": "S7",
    "AccessionNumber": "ACC123",
    "ReferringPhysicianName": "Doe^Jane",
    "StudyDescription": "Chest PA",
    "ViewPosition": "PA",
    "BodyPartExamined": "CHEST",
}


def write_cr(path, attenuation: np.ndarray, *, photometric: str = "MONOCHROME2", extra: dict | None = None):
    """A CR file whose display (bright = attenuating) is ``attenuation`` at 12 bits."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    for keyword, value in IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.PixelSpacing = [0.143, 0.15]
    ds.ImagerPixelSpacing = [0.16, 0.17]
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    stored = np.rint(attenuation * TOP).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (TOP - stored).astype(np.uint16)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, BITS, BITS - 1, 0
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
