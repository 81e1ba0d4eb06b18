"""The PyTorch model definitions, training-side: the runtime SDK (``edgedet.Detector``) never
imports them. They need the ``torch`` extra, which this says in one line where it is missing
(instead of a bare ``ModuleNotFoundError`` from the first model file)."""

try:
    import safetensors  # noqa: F401  (checkpoints)
    import torch  # noqa: F401
except ImportError as exc:
    raise ImportError(f"edgedet.models defines the PyTorch models and needs torch and "
                      f"safetensors ({exc}); install them with: pip install 'edgedet[torch]'"
                      ) from exc
