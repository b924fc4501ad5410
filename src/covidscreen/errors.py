"""User-facing errors.

Every problem a user can cause (bad path, bad table, unknown model, unreadable image) raises a subclass of
:class:`CovidscreenError` whose message says what was wrong and what is accepted. The CLI prints the message on one
line and exits with code 2; library users can catch the class.
"""


class CovidscreenError(Exception):
    """Base class of errors caused by input (files, options, configs), not by bugs."""


class DataError(CovidscreenError):
    """A data folder, table or image is missing or malformed."""


class ImageDecodeError(DataError):
    """One image file could not be decoded."""


class ModalityError(DataError):
    """An input of another imaging modality than the model reads (a CT slice sent to an X-ray model, or the reverse)."""


class ModelError(CovidscreenError):
    """Unknown model name, unavailable weights or a weights file that does not match."""


class ConfigError(CovidscreenError):
    """A configuration key or value is invalid."""


class CheckpointError(CovidscreenError):
    """A run folder or checkpoint is missing or damaged."""


class DiskFullError(CovidscreenError):
    """A file could not be written because its disk or quota is full; the previous version of the file is kept."""


class Interrupted(CovidscreenError):
    """The user interrupted a job (Ctrl-C); the message says what was saved and how to continue."""
