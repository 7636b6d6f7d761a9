"""Thin glue to training frameworks; the logic lives in :class:`igulora.IguAllocator`."""

from .hf import IguLoraCallback, IguLoraTrainer

__all__ = ["IguLoraCallback", "IguLoraTrainer"]
