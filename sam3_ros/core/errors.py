"""Error types of sam3_ros. Every error a caller can cause derives from `Sam3RosError`."""


class Sam3RosError(Exception):
    """Base class of the package's errors; the message says what is wrong and what was expected."""


class InvalidImageError(Sam3RosError, ValueError):
    """An image (or image message) is inconsistent: size, step, encoding or data length."""


class InvalidPromptError(Sam3RosError, ValueError):
    """A prompt (text, point, box, object id) is invalid for the current stream or model."""


class InvalidDetectionsError(Sam3RosError, ValueError):
    """Arrays given to `Detections` disagree in shape or dtype."""


class ModelLoadError(Sam3RosError, RuntimeError):
    """A model or engine could not be loaded, moved to its device or warmed up."""


class ConfigError(Sam3RosError, ValueError):
    """A parameter value is invalid."""
