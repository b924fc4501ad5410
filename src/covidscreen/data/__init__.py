"""Data: image tables, image decoding, patient-grouped splits and the preprocessed cache.

- ``decode.py``: any accepted file (PNG, JPEG, DICOM) to one greyscale uint8 array.
- ``table.py``: a data folder (``metadata.csv`` or ``<label>/`` sub-folders) to a validated pandas table.
- ``locate.py``: where the data lives (``--data``, ``COVIDSCREEN_DATA``, ``../shared/data``).
- ``splits.py``: patient-grouped, label-stratified, seeded train/val/test splits and k folds, with fingerprints;
  groups that join patients with near-duplicate images; a user's split file.
- ``duplicates.py``: the near-duplicate detector (perceptual hashes, multi-index Hamming search, thumbnail
  correlation) shared by the split and the leakage audit, cached beside the image cache.
- ``cache.py``: decoded, resized images in a memory-mapped file so that later epochs skip decoding.
- ``augment.py``: X-ray-safe batch augmentation (small affine, brightness/contrast, no vertical flips).
"""
