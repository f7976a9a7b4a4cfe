"""The model registry: adding a family is one file here and one line below."""

from __future__ import annotations

from genai_cli.models import cgan, dcgan, gan, pix2pix, vae
from genai_cli.models.base import AdversarialModel, GenerativeModel, ModelSpec, VariationalModel
from genai_cli.registry import Registry

MODELS: Registry[ModelSpec] = Registry("model")
for _spec in (gan.SPEC, dcgan.SPEC, cgan.SPEC, vae.SPEC, vae.CONDITIONAL_SPEC, pix2pix.SPEC):
    MODELS.add(_spec.name, _spec)

__all__ = ["MODELS", "ModelSpec", "GenerativeModel", "AdversarialModel", "VariationalModel"]
