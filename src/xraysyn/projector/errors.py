"""The projector's input error (one clear error per malformed input)."""

__all__ = ["ProjectorInputError"]


class ProjectorInputError(ValueError):
    """Raised for malformed projector inputs (shape, dtype, non-finite values, bad geometry)."""
