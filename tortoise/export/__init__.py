"""Export Tortoise's networks to ONNX and OpenVINO IR, verified against torch and cached by fingerprint.

Command line: ``tortoise-export`` / ``python -m tortoise.export`` (`tortoise.export.cli`). From code::

    from tortoise.export import ensure_exported
    path = ensure_exported("ar_transformer", models_dir, backend="openvino")   # exported on first use, then cached

Components (`tortoise.export.components.COMPONENTS`): ar_conditioning, ar_transformer,
clvp_text, clvp_speech, diffusion_conditioning, diffusion_embedding, diffusion_step, diffusion_step_unguided,
univnet, bigvgan_base, bigvgan, hifigan. Nothing here imports torch.onnx, onnxruntime or openvino until an export runs.
"""
from tortoise.export.components import COMPONENTS, Shapes  # noqa: F401
from tortoise.export.exporter import (  # noqa: F401
    ExportError, ExportOptions, ExportResult, VerificationError, ensure_exported, export)
