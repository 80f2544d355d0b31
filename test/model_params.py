"""Every model parameter's declared default (`MODEL_PARAMS`), for tests that build the
parameter reader the model key reads: a new backend option then cannot break them with a
KeyError."""

from __future__ import annotations

from typing import Any


def model_param_defaults(**overrides: Any) -> dict[str, Any]:
    """The declared defaults of the model parameters, with `overrides` applied."""
    from sam3_ros.ros.params import MODEL_PARAMS

    return {**{spec.name: spec.default for spec in MODEL_PARAMS}, **overrides}
