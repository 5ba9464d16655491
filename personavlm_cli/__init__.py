"""personavlm: a local assistant that remembers its user (PersonaVLM, arXiv 2604.13074)."""

__version__ = "0.1.0"

import os as _os

# Nothing leaves the machine: onnxruntime (text embeddings) sends usage telemetry from native code
# unless told not to, and Chroma's client reads this variable too. Set before either is imported.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
_os.environ["ANONYMIZED_TELEMETRY"] = "False"
